package auditbridge

import (
	"reflect"
	"strings"
	"testing"
)

type emitted struct {
	line    string
	tooLong bool
}

func TestSplitter(t *testing.T) {
	tests := map[string]struct {
		chunks []string
		flush  bool
		want   []emitted
	}{
		"one line":             {chunks: []string{"abc\n"}, want: []emitted{{line: "abc"}}},
		"split across reads":   {chunks: []string{"ab", "c\nde", "f\n"}, want: []emitted{{line: "abc"}, {line: "def"}}},
		"several in one read":  {chunks: []string{"a\nb\n\nc\n"}, want: []emitted{{line: "a"}, {line: "b"}, {line: ""}, {line: "c"}}},
		"partial kept":         {chunks: []string{"a\nb"}, want: []emitted{{line: "a"}}},
		"partial flushed":      {chunks: []string{"a\nb"}, flush: true, want: []emitted{{line: "a"}, {line: "b"}}},
		"exactly max":          {chunks: []string{"12345678\n"}, want: []emitted{{line: "12345678"}}},
		"too long in one read": {chunks: []string{"123456789\nok\n"}, want: []emitted{{tooLong: true}, {line: "ok"}}},
		"too long across reads": {
			chunks: []string{"12345", "6789", "abcdef", "ghi\nok\n"},
			want:   []emitted{{tooLong: true}, {line: "ok"}},
		},
		"too long then flushed": {chunks: []string{"123456789abc"}, flush: true, want: []emitted{{tooLong: true}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var got []emitted
			s := newSplitter(8, func(line []byte, tooLong bool) { got = append(got, emitted{string(line), tooLong}) })
			for _, c := range tc.chunks {
				s.feed([]byte(c))
			}
			if tc.flush {
				s.flush()
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("emitted %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSplitterReset(t *testing.T) {
	var got []string
	s := newSplitter(8, func(line []byte, _ bool) { got = append(got, string(line)) })
	s.feed([]byte("abc"))
	s.reset()
	s.feed([]byte("def\n"))
	if want := []string{"def"}; !reflect.DeepEqual(got, want) {
		t.Errorf("emitted %q, want %q", got, want)
	}
}

func TestSplitterReleasesLargeBuffers(t *testing.T) {
	s := newSplitter(1<<20, func([]byte, bool) {})
	s.feed([]byte(strings.Repeat("x", 200<<10) + "\n"))
	if cap(s.buf) > keepCap {
		t.Errorf("buffer capacity %d kept after a large line", cap(s.buf))
	}
}
