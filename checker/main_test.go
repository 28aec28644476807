package checker_test

import (
	"testing"

	"github.com/credinject/credinject/internal/testenv"
)

// The integration tests need the real bed; the in-process tests and the
// benchmarks do not mind it.
func TestMain(m *testing.M) { testenv.Main(m, testenv.WithKube|testenv.WithVault) }
