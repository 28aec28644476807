package auditbridge

import (
	"reflect"
	"testing"

	"github.com/credinject/credinject/events"
)

func rot(ns, sa string) events.Rotation { return events.Rotation{Namespace: ns, ServiceAccount: sa} }

func TestQueueCoalesces(t *testing.T) {
	q := newQueue(10)
	for _, r := range []events.Rotation{rot("a", "1"), rot("b", "1"), rot("a", "1"), {Namespace: "a", ServiceAccount: "1", Route: "x"}} {
		q.push(r)
	}
	select {
	case <-q.ready:
	default:
		t.Fatal("not signalled")
	}
	want := []events.Rotation{rot("a", "1"), rot("b", "1"), {Namespace: "a", ServiceAccount: "1", Route: "x"}}
	if got := q.take(); !reflect.DeepEqual(got, want) {
		t.Errorf("take = %+v, want %+v", got, want)
	}
	// Once taken (being published), the same identity queues again: the
	// event in flight may predate the new write.
	if res := q.push(rot("a", "1")); res != queued {
		t.Errorf("push after take = %v, want queued", res)
	}
}

func TestQueueOverflowCollapses(t *testing.T) {
	q := newQueue(2)
	q.push(rot("a", "1"))
	q.push(rot("a", "2"))
	if res := q.push(rot("a", "3")); res != overflowed {
		t.Fatalf("push beyond max = %v, want overflowed", res)
	}
	if res := q.push(rot("b", "1")); res != coalesced {
		t.Errorf("push after the collapse = %v, want coalesced into the event for everything", res)
	}
	if got, want := q.take(), []events.Rotation{{}}; !reflect.DeepEqual(got, want) {
		t.Errorf("take = %+v, want %+v", got, want)
	}
}

func TestQueueRequeue(t *testing.T) {
	q := newQueue(3)
	q.push(rot("new", "1"))
	q.push(rot("old", "2")) // arrived again while the batch was out
	if over := q.requeue([]events.Rotation{rot("old", "1"), rot("old", "2")}); over {
		t.Fatal("overflow")
	}
	want := []events.Rotation{rot("old", "1"), rot("old", "2"), rot("new", "1")}
	if got := q.take(); !reflect.DeepEqual(got, want) {
		t.Errorf("take = %+v, want %+v", got, want)
	}
	q.push(rot("x", "1"))
	q.push(rot("x", "2"))
	if over := q.requeue([]events.Rotation{rot("y", "1"), rot("y", "2")}); !over {
		t.Error("no overflow with 4 events in a buffer of 3")
	}
	if got, want := q.take(), []events.Rotation{{}}; !reflect.DeepEqual(got, want) {
		t.Errorf("take = %+v, want %+v", got, want)
	}
}
