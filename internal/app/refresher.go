package app

import (
	"github.com/credinject/credinject/events"
	"github.com/credinject/credinject/watcher"
)

// The watcher reads overlapping event scopes that start together once
// (events.BatchRefresher); without it the Subscriber would call Refresh once
// per scope.
var _ events.BatchRefresher = (*watcher.Watcher)(nil)
