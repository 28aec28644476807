package testenv

import (
	"bytes"
	"context"
	"fmt"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
)

// FakeNode is the node name the bed's Pods are assigned to. No kubelet runs
// and no Node object exists: a Pod so assigned just sits there.
const FakeNode = "testenv-no-such-node"

// CreatePod creates a Pod running as serviceAccount on FakeNode and returns
// its uid.
func (k *Kube) CreatePod(ctx context.Context, namespace, name, serviceAccount string) (string, error) {
	p, err := k.Client.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: serviceAccount, NodeName: FakeNode,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("testenv: create pod %s/%s: %w", namespace, name, err)
	}
	return string(p.UID), nil
}

// DeletePod force-deletes a Pod (grace period 0: no kubelet runs here to
// finish a graceful deletion).
func (k *Kube) DeletePod(ctx context.Context, namespace, name string) error {
	zero := int64(0)
	if err := k.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("testenv: delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// CreateSecret creates an Opaque Secret and returns its uid.
func (k *Kube) CreateSecret(ctx context.Context, namespace, name string) (string, error) {
	s, err := k.Client.CoreV1().Secrets(namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name}, StringData: map[string]string{"k": "v"},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("testenv: create secret %s/%s: %w", namespace, name, err)
	}
	return string(s.UID), nil
}

// DeleteSecret deletes a Secret.
func (k *Kube) DeleteSecret(ctx context.Context, namespace, name string) error {
	if err := k.Client.CoreV1().Secrets(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("testenv: delete secret %s/%s: %w", namespace, name, err)
	}
	return nil
}

// CreateNode creates a Node object (no kubelet behind it) and returns its uid.
func (k *Kube) CreateNode(ctx context.Context, name string) (string, error) {
	n, err := k.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("testenv: create node %s: %w", name, err)
	}
	return string(n.UID), nil
}

// DeleteNode deletes a Node object.
func (k *Kube) DeleteNode(ctx context.Context, name string) error {
	if err := k.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("testenv: delete node %s: %w", name, err)
	}
	return nil
}

// BoundToken mints a token for namespace/serviceAccount bound to the object
// kind ("Pod", "Secret", "Node") name/uid, as the kubelet does for every pod.
func (k *Kube) BoundToken(ctx context.Context, namespace, serviceAccount, kind, name, uid string) (string, error) {
	secs := int64(time.Hour / time.Second)
	tr, err := k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: kind, APIVersion: "v1", Name: name, UID: k8stypes.UID(uid)},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("testenv: token for %s/%s bound to %s %s: %w", namespace, serviceAccount, kind, name, err)
	}
	return tr.Status.Token, nil
}

// RequestCount sums the API server's own apiserver_request_total samples
// for resource (all verbs and codes), read from its /metrics.
func (k *Kube) RequestCount(ctx context.Context, resource string) (float64, error) {
	return k.RequestCountOf(ctx, resource, "*")
}

// RequestCountOf is RequestCount for one subresource of resource ("" for
// the resource itself, "*" for any): "serviceaccounts", "token" counts
// TokenRequests.
func (k *Kube) RequestCountOf(ctx context.Context, resource, subresource string) (float64, error) {
	return k.RequestCountVerb(ctx, resource, subresource, "*")
}

// RequestCountVerb is RequestCountOf for one verb as the API server labels
// it ("GET", "LIST", "WATCH", "CREATE", ...; "*" for any).
func (k *Kube) RequestCountVerb(ctx context.Context, resource, subresource, verb string) (float64, error) {
	raw, err := k.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, fmt.Errorf("testenv: apiserver /metrics: %w", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		return 0, fmt.Errorf("testenv: apiserver /metrics: %w", err)
	}
	sum := 0.0
	for _, m := range fams["apiserver_request_total"].GetMetric() {
		if label(m, "resource") == resource && (subresource == "*" || label(m, "subresource") == subresource) && (verb == "*" || label(m, "verb") == verb) {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
