package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	cases := map[string]struct {
		n      int
		jitter float64
		want   time.Duration
	}{
		"first":           {1, 0, time.Second},
		"second doubles":  {2, 0, 2 * time.Second},
		"capped":          {10, 0, 30 * time.Second},
		"jitter up":       {1, 1, 1200 * time.Millisecond},
		"jitter down":     {1, -1, 800 * time.Millisecond},
		"zero is first":   {0, 0, time.Second},
		"cap with jitter": {50, 1, 36 * time.Second},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := Delay(c.n, time.Second, 30*time.Second, c.jitter); got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}
