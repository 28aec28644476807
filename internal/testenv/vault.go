package testenv

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credinject/credinject/internal/devstack"
)

// Names from the reference design (shared/reference).
const (
	VaultRole      = "egress-workload"
	VaultPolicy    = "egress-read"
	BoundNamespace = "egress-test"
	VaultKubeMount = "kubernetes"
	VaultJWTMount  = "jwt"
	VaultKVMount   = "secret"
	reviewerNS     = "vault"
	reviewerSA     = "vault-reviewer"
)

// Vault is a running Vault server (the real server code, built by
// tools/build.sh) configured like the reference design: kv v2 at secret/,
// Kubernetes auth against the bed's API server, the egress-workload role and
// the egress-read policy, JWT auth enabled.
type Vault struct {
	Addr      string
	RootToken string
	Client    *vaultapi.Client
	// KubeAccessor is the accessor of auth/kubernetes (for templated policies).
	KubeAccessor string

	opts devstack.VaultOptions
	proc *devstack.Vault

	mu       sync.Mutex
	bound    []string
	policies []string
}

// StartVault starts Vault in dir and, when kube is not nil, configures the
// Kubernetes auth method against it.
func StartVault(ctx context.Context, dir string, kube *Kube) (*Vault, error) {
	return StartVaultWith(ctx, dir, kube, VaultOptions{})
}

// VaultOptions are a second Vault's differences from the bed's.
type VaultOptions struct {
	// TLS: serve HTTPS (Addr is then https://127.0.0.1:PORT, and Client
	// trusts and presents what TLS says).
	TLS *devstack.VaultTLS
	// Namespace: refuse requests without this X-Vault-Namespace (see
	// devstack.VaultOptions.Namespace); Client sends it.
	Namespace string
}

// StartVaultWith is StartVault with options.
func StartVaultWith(ctx context.Context, dir string, kube *Kube, o VaultOptions) (*Vault, error) {
	tls := o.TLS
	bin, err := devstack.VaultBinary(ctx, os.Stderr)
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if tls != nil {
		scheme = "https"
	}
	v := &Vault{
		Addr: scheme + "://127.0.0.1:" + strconv.Itoa(port), RootToken: devstack.RootToken, bound: []string{BoundNamespace},
		policies: []string{VaultPolicy},
		opts:     devstack.VaultOptions{Bin: bin, Addr: "127.0.0.1:" + strconv.Itoa(port), DataDir: dir, TLS: tls, Namespace: o.Namespace},
	}
	if err := v.Start(ctx); err != nil {
		return nil, err
	}
	// The process's own client already carries the TLS settings and the
	// namespace.
	v.Client, err = v.proc.Client.CloneWithHeaders()
	if err != nil {
		v.Stop()
		return nil, err
	}
	v.Client.SetToken(v.RootToken)
	if err := v.setup(ctx, kube); err != nil {
		v.Stop()
		return nil, fmt.Errorf("testenv: vault setup: %w (log: %s)", err, v.proc.LogPath())
	}
	return v, nil
}

// Start (re)starts the Vault process on its port, with its data.
func (v *Vault) Start(ctx context.Context) error {
	p, err := devstack.StartVault(ctx, v.opts)
	if err != nil {
		return err
	}
	v.proc = p
	return nil
}

// Stop stops the Vault process (for fault tests; Start brings it back).
func (v *Vault) Stop() {
	if v.proc != nil {
		v.proc.Stop()
	}
}

func (v *Vault) setup(ctx context.Context, kube *Kube) error {
	sys := v.Client.Sys()
	if err := sys.EnableAuthWithOptionsWithContext(ctx, VaultJWTMount, &vaultapi.EnableAuthOptions{Type: "jwt"}); err != nil {
		return fmt.Errorf("enable jwt auth: %w", err)
	}
	if kube == nil {
		return nil
	}
	if err := sys.EnableAuthWithOptionsWithContext(ctx, VaultKubeMount, &vaultapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		return fmt.Errorf("enable kubernetes auth: %w", err)
	}
	auths, err := sys.ListAuthWithContext(ctx)
	if err != nil {
		return err
	}
	v.KubeAccessor = auths[VaultKubeMount+"/"].Accessor
	reviewer, err := kube.reviewerToken(ctx)
	if err != nil {
		return err
	}
	if _, err := v.Client.Logical().WriteWithContext(ctx, "auth/"+VaultKubeMount+"/config", map[string]any{
		"kubernetes_host":    kube.URL,
		"kubernetes_ca_cert": string(kube.CAPEM),
		"token_reviewer_jwt": reviewer,
	}); err != nil {
		return fmt.Errorf("kubernetes auth config: %w", err)
	}
	if err := sys.PutPolicyWithContext(ctx, VaultPolicy, devstack.EgressPolicy(v.KubeAccessor)); err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	return v.writeRole(ctx)
}

func (v *Vault) writeRole(ctx context.Context) error {
	v.mu.Lock()
	bound := strings.Join(v.bound, ",")
	policies := strings.Join(v.policies, ",")
	v.mu.Unlock()
	_, err := v.Client.Logical().WriteWithContext(ctx, "auth/"+VaultKubeMount+"/role/"+VaultRole, map[string]any{
		"bound_service_account_names":      "*",
		"bound_service_account_namespaces": bound,
		"token_policies":                   policies,
		"ttl":                              "1h",
	})
	if err != nil {
		return fmt.Errorf("role %s: %w", VaultRole, err)
	}
	return nil
}

// BindNamespace adds ns to the egress-workload role.
func (v *Vault) BindNamespace(ctx context.Context, ns string) error {
	v.mu.Lock()
	if !slices.Contains(v.bound, ns) {
		v.bound = append(v.bound, ns)
	}
	v.mu.Unlock()
	return v.writeRole(ctx)
}

// AddPolicy writes the policy name and gives it to the egress-workload role
// too (for the paths of minted sources).
func (v *Vault) AddPolicy(ctx context.Context, name, hcl string) error {
	if err := v.Client.Sys().PutPolicyWithContext(ctx, name, hcl); err != nil {
		return fmt.Errorf("testenv: policy %s: %w", name, err)
	}
	v.mu.Lock()
	if !slices.Contains(v.policies, name) {
		v.policies = append(v.policies, name)
	}
	v.mu.Unlock()
	return v.writeRole(ctx)
}

// UnbindNamespace removes ns from the egress-workload role.
func (v *Vault) UnbindNamespace(ctx context.Context, ns string) error {
	v.mu.Lock()
	v.bound = slices.DeleteFunc(v.bound, func(s string) bool { return s == ns })
	v.mu.Unlock()
	return v.writeRole(ctx)
}

// PutCredential writes data at secret/<path> (kv v2) and returns the version.
func (v *Vault) PutCredential(ctx context.Context, path string, data map[string]any) (int, error) {
	s, err := v.Client.KVv2(VaultKVMount).Put(ctx, path, data)
	if err != nil {
		return 0, fmt.Errorf("testenv: put %s: %w", path, err)
	}
	return s.VersionMetadata.Version, nil
}

// DeleteCredential removes every version of secret/<path>.
func (v *Vault) DeleteCredential(ctx context.Context, path string) error {
	if err := v.Client.KVv2(VaultKVMount).DeleteMetadata(ctx, path); err != nil {
		return fmt.Errorf("testenv: delete %s: %w", path, err)
	}
	return nil
}

// reviewerToken creates Vault's TokenReview identity (system:auth-delegator)
// and returns a long-lived token for it.
func (k *Kube) reviewerToken(ctx context.Context) (string, error) {
	if _, err := k.CreateServiceAccount(ctx, reviewerNS, reviewerSA); err != nil {
		return "", err
	}
	_, err := k.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "vault-reviewer-auth-delegator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:auth-delegator"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: reviewerNS, Name: reviewerSA}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("testenv: reviewer binding: %w", err)
	}
	return k.Token(ctx, reviewerNS, reviewerSA, nil, 48*time.Hour)
}
