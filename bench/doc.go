// Package bench is credinject's load harness: it drives ext_authz servers
// (envoy.service.auth.v3.Authorization) over gRPC with requests built like
// Envoy's, over many real workload identities, and measures what each answer
// costs.
//
// It owns the load generator (closed loop: C workers for a duration; open
// loop: a fixed schedule of send times, latency counted from each request's
// intended send time so a slow server cannot hide its stalls), the
// correctness check of every answer (status OK and the injected header equal
// to that identity's own key; anything else is an error, never a latency
// sample), and the three targets compared in one run:
//
//   - noop: a bare ext_authz server that allows everything with a fixed
//     header, the ceiling of a gRPC Check on this machine;
//   - credinject: the real server (internal/app) on the real test bed;
//   - reference: the reference design's per-request work (TokenReview, Vault
//     login, Vault read, no caching) as its own ext_authz server.
//
// It does not own plotting or flags (cmd/credinject-bench) and it is never
// linked into the credinject binary. It imports internal/testenv, the test
// bed, because the benchmark runs against the bed's real servers.
package bench
