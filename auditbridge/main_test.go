//go:build bed

package auditbridge

import (
	"testing"

	"github.com/credinject/credinject/internal/testenv"
)

// The integration tests run against the bed's real Vault (audit devices
// enabled per test and disabled before the test's listener closes) and real
// NATS. Tests do not run in parallel: they share both servers.
func TestMain(m *testing.M) { testenv.Main(m, testenv.WithVault|testenv.WithNATS) }
