package watcher_test

import (
	"testing"

	"github.com/credinject/credinject/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.WithKube|testenv.WithVault) }
