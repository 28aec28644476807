//go:build tools

// Package promtool pins Prometheus's promtool, which the tests use to check
// deploy/monitoring's alerting rules (`promtool check rules`, `promtool test rules`).
package promtool

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
