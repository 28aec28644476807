package testenv

import (
	"crypto/rand"
	"encoding/hex"
)

// RandHex is n random bytes in hex (2n characters): unique names for
// what a test creates on the shared bed.
func RandHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
