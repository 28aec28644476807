package testenv

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Issuer is the service-account issuer of the test API server.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// Audience is the API server's default token audience.
const Audience = "https://kubernetes.default.svc.cluster.local"

// Kube is a running kube-apiserver with its etcd.
type Kube struct {
	URL        string
	CAPEM      []byte
	AdminToken string
	Client     kubernetes.Interface
	// SAKey is the API server's service-account signing key. Tests use it
	// only to mint tokens the API server would not issue on demand (an
	// already expired one).
	SAKey *rsa.PrivateKey

	dir             string
	etcd, apiserver *proc
}

// StartKube starts etcd and kube-apiserver in dir.
func StartKube(ctx context.Context, dir string) (*Kube, error) {
	bin, err := ToolDir("kube")
	if err != nil {
		return nil, err
	}
	etcdBin := os.Getenv("CREDINJECT_ETCD")
	if etcdBin == "" {
		etcdBin = "etcd"
	}
	pk, err := newPKI(dir)
	if err != nil {
		return nil, fmt.Errorf("testenv: pki: %w", err)
	}
	admin := "admin-" + RandHex(16)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(admin+",admin,admin-uid,\"system:masters\"\n"), 0o600); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	ep, pp, sp := ports[0], ports[1], ports[2]
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ep)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(pp)
	k := &Kube{URL: "https://127.0.0.1:" + strconv.Itoa(sp), CAPEM: pk.caPEM, AdminToken: admin, SAKey: pk.saKey, dir: dir}
	k.etcd = &proc{name: "etcd", bin: etcdBin, logPath: filepath.Join(dir, "etcd.log"), args: []string{
		"--name", "t", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "t=" + peerURL, "--initial-cluster-state", "new",
		"--log-level", "warn",
	}}
	if err := k.etcd.start(); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, k.etcd, "etcd health", 30*time.Second, httpOK(http.DefaultClient, etcdURL+"/health")); err != nil {
		k.Stop()
		return nil, err
	}
	k.apiserver = &proc{name: "kube-apiserver", bin: filepath.Join(bin, "kube-apiserver"), logPath: filepath.Join(dir, "kube-apiserver.log"), args: []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(sp),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + pk.certFile, "--tls-private-key-file=" + pk.keyFile,
		"--client-ca-file=" + pk.caFile,
		"--token-auth-file=" + tokens,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + pk.saPubFile,
		"--service-account-signing-key-file=" + pk.saKeyFile,
		"--api-audiences=" + Audience,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=0",
	}}
	if err := k.apiserver.start(); err != nil {
		k.Stop()
		return nil, err
	}
	if err := waitFor(ctx, k.apiserver, "kube-apiserver /readyz", 90*time.Second, httpOK(k.httpClient(), k.URL+"/readyz")); err != nil {
		k.Stop()
		return nil, err
	}
	k.Client, err = kubernetes.NewForConfig(k.RestConfig())
	if err != nil {
		k.Stop()
		return nil, err
	}
	// Let anyone read the issuer discovery documents, as clusters do.
	if _, err := k.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "testenv-issuer-discovery"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: "system:unauthenticated"}, {Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: "system:authenticated"}},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		k.Stop()
		return nil, fmt.Errorf("testenv: issuer discovery binding: %w", err)
	}
	return k, nil
}

// Stop stops the API server and etcd.
func (k *Kube) Stop() {
	if k.apiserver != nil {
		k.apiserver.stop()
	}
	if k.etcd != nil {
		k.etcd.stop()
	}
}

func (k *Kube) httpClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.CAPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// RestConfig is an admin client configuration.
func (k *Kube) RestConfig() *rest.Config {
	return &rest.Config{
		Host:            k.URL,
		BearerToken:     k.AdminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: k.CAPEM},
		QPS:             500,
		Burst:           1000,
	}
}

// Kubeconfig writes an admin kubeconfig file (for `credinject serve`,
// kubectl) and returns its path.
func (k *Kube) Kubeconfig() (string, error) {
	return k.KubeconfigFor("admin", k.AdminToken)
}

// KubeconfigFor writes a kubeconfig that authenticates with token.
func (k *Kube) KubeconfigFor(name, token string) (string, error) {
	path := filepath.Join(k.dir, "kubeconfig-"+name)
	ca := filepath.Join(k.dir, "ca.crt")
	body := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {server: %q, certificate-authority: %q}
users:
- name: %s
  user: {token: %q}
contexts:
- name: testenv
  context: {cluster: testenv, user: %s}
current-context: testenv
`, k.URL, ca, name, token, name)
	return path, os.WriteFile(path, []byte(body), 0o600)
}

var nameSeq atomic.Int64

// UniqueName returns prefix with a suffix unique in this test binary (the bed
// runs no namespace controller: deleted namespaces never go away).
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%s", prefix, nameSeq.Add(1), RandHex(3))
}

// CreateNamespace creates a namespace.
func (k *Kube) CreateNamespace(ctx context.Context, name string) error {
	_, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("testenv: create namespace %s: %w", name, err)
	}
	return nil
}

// CreateServiceAccount creates namespace/name (and the namespace) and returns
// the ServiceAccount's uid.
func (k *Kube) CreateServiceAccount(ctx context.Context, namespace, name string) (string, error) {
	if err := k.CreateNamespace(ctx, namespace); err != nil {
		return "", err
	}
	sa, err := k.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		sa, err = k.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return "", fmt.Errorf("testenv: create serviceaccount %s/%s: %w", namespace, name, err)
	}
	return string(sa.UID), nil
}

// DeleteServiceAccount deletes namespace/name.
func (k *Kube) DeleteServiceAccount(ctx context.Context, namespace, name string) error {
	err := k.Client.CoreV1().ServiceAccounts(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil {
		return fmt.Errorf("testenv: delete serviceaccount %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Token mints a token for namespace/name through TokenRequest. audiences nil
// means the API server's default; ttl is at least 10 minutes.
func (k *Kube) Token(ctx context.Context, namespace, name string, audiences []string, ttl time.Duration) (string, error) {
	if ttl < 10*time.Minute {
		ttl = 10 * time.Minute
	}
	secs := int64(ttl / time.Second)
	tr, err := k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("testenv: token for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// Identity creates a fresh namespace with a ServiceAccount and returns both
// names and a token for the default audience.
func (k *Kube) Identity(ctx context.Context, prefix string) (ns, sa, token string, err error) {
	ns, sa = UniqueName(prefix), "workload"
	if _, err = k.CreateServiceAccount(ctx, ns, sa); err != nil {
		return
	}
	token, err = k.Token(ctx, ns, sa, nil, time.Hour)
	return
}
