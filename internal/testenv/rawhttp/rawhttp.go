// Package rawhttp sends an HTTP/1.1 request with its target written as is,
// which no Go client does (net/http cleans and escapes paths): tests use it
// to ask /check the paths a gateway may append. It imports nothing of ours.
package rawhttp

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// Do sends method target over a new connection to addr with the headers
// hdr (and Connection: close, Content-Length: 0) and returns the response,
// its body read into body and closed. A network error fails t.
func Do(t testing.TB, addr, method, target string, hdr map[string]string) (resp *http.Response, body string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n")
	for k, v := range hdr {
		b.WriteString(k + ": " + v + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	resp, err = http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(raw)
}
