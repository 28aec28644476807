// Package testenv starts credinject's test bed: a real kube-apiserver with
// etcd, a real Vault server and a real NATS server, all on loopback, each once
// per test binary (from TestMain), and stops them on exit, keeping their logs
// when a test failed. Tests import it; the product binary never does.
//
//	func TestMain(m *testing.M) { testenv.Main(m, testenv.WithKube|testenv.WithVault|testenv.WithNATS) }
//
// Other servers start on first use or per test: PostgreSQL, Ory Hydra, an
// OTLP sink, and an S3 gateway (StartS3: the Versity S3 gateway, a real AWS
// SigV4 verifier with one access key per account; MinIO would do the same
// but is AGPL, a license the project does not take).
//
// The server binaries are built from the Go module proxy by tools/build.sh
// (`make tools`) into a cache outside the repository.
package testenv
