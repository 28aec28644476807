package auditbridge

import "bytes"

// splitter cuts a byte stream into lines of at most max bytes (without the
// newline). A longer line is reported once, as tooLong, the moment it
// exceeds the limit, and the rest of it is discarded as it arrives, so a
// runaway writer never makes the bridge hold more than max bytes per
// stream. The line handed to emit is only valid during the call.
type splitter struct {
	max      int
	buf      []byte
	skipping bool
	emit     func(line []byte, tooLong bool)
}

func newSplitter(max int, emit func(line []byte, tooLong bool)) *splitter {
	return &splitter{max: max, emit: emit}
}

// keepCap is the buffer capacity kept between lines; a buffer grown by one
// large line is released after it.
const keepCap = 64 << 10

func (s *splitter) feed(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
			p = p[i+1:]
		} else {
			p = nil
		}
		if !s.skipping {
			if len(s.buf)+len(chunk) > s.max {
				s.skipping = true
				s.clear()
				s.emit(nil, true)
			} else {
				s.buf = append(s.buf, chunk...)
			}
		}
		if i >= 0 {
			if !s.skipping {
				s.emit(s.buf, false)
			}
			s.skipping = false
			s.clear()
		}
	}
}

// flush hands over a last line that had no newline (a stream that ended).
func (s *splitter) flush() {
	if !s.skipping && len(s.buf) > 0 {
		s.emit(s.buf, false)
	}
	s.reset()
}

// reset drops a partial line (a file that was truncated under us).
func (s *splitter) reset() {
	s.skipping = false
	s.clear()
}

func (s *splitter) clear() {
	if cap(s.buf) > keepCap {
		s.buf = nil
		return
	}
	s.buf = s.buf[:0]
}
