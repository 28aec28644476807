//go:build tools

// Package tools pins the Versity S3 gateway (Apache-2.0), the bed's SigV4
// verifier: an S3 server over a POSIX folder that checks every request's AWS
// Signature Version 4 against its own IAM accounts. Built by ../build.sh (not
// part of credinject).
package tools

import _ "github.com/versity/versitygw/cmd/versitygw"
