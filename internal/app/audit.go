package app

import (
	"fmt"
	"io"

	"github.com/credinject/credinject/audit"
	"github.com/credinject/credinject/checker"
	"github.com/credinject/credinject/watcher"
)

// auditTrail opens audit.output and builds the audit log, and returns it
// with the function that closes the output. With output off the log is
// still built, writing nowhere and joined to nothing, so its metrics exist
// (at zero) for dashboards and alerts; the log returned is then nil.
func (a *App) auditTrail() (*audit.Log, func() error, error) {
	cfg := a.cfg.Audit
	w, closeFn, err := audit.Open(cfg.Output)
	if err != nil {
		return nil, nil, fmt.Errorf("audit.output: %w", err)
	}
	on := w != nil
	if !on {
		w = io.Discard
	}
	l, err := audit.New(audit.Config{
		Output: w, Interval: cfg.Interval, MaxKeys: cfg.MaxKeys,
		Clock: a.opts.Clock, Registerer: a.reg, Log: a.reqLog.With("component", "audit"),
	})
	if err != nil {
		if closeFn != nil {
			closeFn()
		}
		return nil, nil, err
	}
	if !on {
		l = nil
	}
	return l, closeFn, nil
}

// usageRecorder hands the checker's decisions to the audit log.
type usageRecorder struct{ l *audit.Log }

var _ checker.Recorder = usageRecorder{}

func (r usageRecorder) Record(u checker.Use) {
	r.l.Use(audit.Use{At: u.At, Reason: u.Reason, Identity: u.Identity.Key(), IdentitySource: u.IdentitySource.String(), Route: u.Route, Host: u.Host,
		Version: u.Version, TokenTag: u.TokenTag})
}

// lifecycleAuditor hands the watcher's lifecycle records to the audit log.
type lifecycleAuditor struct{ l *audit.Log }

var _ watcher.Auditor = lifecycleAuditor{}

func (r lifecycleAuditor) Lifecycle(e watcher.Lifecycle) {
	r.l.Lifecycle(audit.Event{
		Kind: string(e.Kind), Identity: e.Identity.Key(), Route: e.Route, Source: string(e.Source), Path: e.Path,
		Version: e.Version, OldVersion: e.OldVersion, LeaseID: e.LeaseID, OldLeaseID: e.OldLeaseID,
		Trigger: e.Trigger.String(), Reason: string(e.Reason), Cause: e.Cause, TTLSeconds: int64(e.TTL.Seconds()),
	})
}

// recorder is the checker's Recorder: nil when the audit trail is off, so
// the hot path does not even call it.
func (a *App) recorder() checker.Recorder {
	if a.audit == nil {
		return nil
	}
	return usageRecorder{a.audit}
}

// auditor is the watcher's Auditor (nil when the audit trail is off).
func (a *App) auditor() watcher.Auditor {
	if a.audit == nil {
		return nil
	}
	return lifecycleAuditor{a.audit}
}
