//go:build tools

// Package hydra pins the Ory Hydra v2 OAuth2 server that the test bed builds
// (client credentials against a real authorization server, in-memory storage).
package hydra

import (
	_ "github.com/ory/hydra/v2"
)
