// Package policies turns the config file's routes, CredentialPolicy
// resources (api/v1alpha1) and the hostnames of the Gateway API HTTPRoutes
// they target into one validated route table, with each policy's Accepted
// condition (compile.go, pure); and runs the controller that watches them,
// hands every new table to an Applier and, on the leader, writes each
// policy's status (controller.go).
//
// It does not serve requests or read Vault: internal/app applies a table to
// the checker's router and the watcher's routes.
package policies
