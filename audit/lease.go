package audit

import "strings"

// leaseShown is how many characters of a lease id's unique part a record
// keeps, at most (and at most a quarter of that part).
const leaseShown = 6

// LeaseRef is how a record names a Vault lease: the path it was read at and
// the first characters of its unique part, "database/creds/team-a/Xq3AbC…"
// for "database/creds/team-a/Xq3AbCdEfGhIjKlMnOpQrStU". The whole id is a
// handle: whoever holds it (with a token allowed to) can renew or revoke
// the lease, so the trail never carries it. What is kept tells one lease
// of a path from another and finds it in `vault list
// sys/leases/lookup/<path>`; Vault's own ids have 24 random characters, so
// 6 of them leave the rest unguessable. "" stays "".
func LeaseRef(id string) string {
	if id == "" {
		return ""
	}
	path, unique := "", id
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		path, unique = id[:i+1], id[i+1:]
	}
	return path + unique[:min(leaseShown, len(unique)/4)] + "…"
}
