package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is credinject.io/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: "credinject.io", Version: "v1alpha1"}

// Resource is the plural resource of CredentialPolicy, for clients and RBAC.
var Resource = GroupVersion.WithResource("credentialpolicies")

var (
	// SchemeBuilder registers the types of this group version.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds CredentialPolicy and its list to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &CredentialPolicy{}, &CredentialPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
