// Package v1alpha1 holds the credinject.io/v1alpha1 API: the
// CredentialPolicy resource, by which a platform team configures a route
// (hosts and path prefixes, the identities it serves, the credential's Vault
// source and how it is injected) with kubectl instead of the config file.
//
// The types carry the CRD's schema: kubebuilder markers give the OpenAPI
// validation and the CEL rules (x-kubernetes-validations) that refuse at
// admission what can be refused without Vault; controller-gen turns them
// into deploy/crds/credinject.io_credentialpolicies.yaml and
// zz_generated.deepcopy.go (make generate). The controller checks the rest
// with the same code as the config file and reports it in the Accepted
// condition.
//
// +kubebuilder:object:generate=true
// +groupName=credinject.io
package v1alpha1
