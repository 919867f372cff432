// Command cm-controller is meshsigner's small cert-manager controller for the test control plane.
//
// It is project code: it links cert-manager's exported pkg/controller packages (the upstream controller
// main lives in a nested module that the Go module proxy does not serve) and runs only the controllers
// that meshsigner's tests need:
//
//   - issuers, clusterissuers (Ready conditions of CA and SelfSigned issuers)
//   - certificaterequests-issuer-ca, certificaterequests-issuer-selfsigned
//   - certificatesigningrequests-issuer-ca, certificatesigningrequests-issuer-selfsigned
//     (Kubernetes CSRs; feature gate ExperimentalCertificateSigningRequestControllers is switched on)
//   - the certificates-* controllers (Certificate objects -> CertificateRequests -> Secrets)
//
// The CertificateRequest auto-approver (certificaterequests-approver) is off unless --auto-approve is
// given or MESHSIGNER_CM_AUTO_APPROVE=1 is set, so tests can show who approves a request.
//
// Every listener binds 127.0.0.1: /metrics on --metrics-listen-address and /healthz + /readyz on
// --healthz-listen-address (ready once all informer caches have synced and the controllers run).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	controller "github.com/cert-manager/cert-manager/pkg/controller"
	logs "github.com/cert-manager/cert-manager/pkg/logs"
	utilfeature "github.com/cert-manager/cert-manager/pkg/util/feature"
	"k8s.io/klog/v2"

	// Controllers register themselves with controller.Register in init().
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificatesigningrequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"

	// Issuer backends register themselves with issuer.RegisterIssuer in init().
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

const approverName = "certificaterequests-approver"

// defaultControllers is what runs without --controllers (the approver is added by --auto-approve).
var defaultControllers = []string{
	"issuers",
	"clusterissuers",
	"certificaterequests-issuer-ca",
	"certificaterequests-issuer-selfsigned",
	"certificatesigningrequests-issuer-ca",
	"certificatesigningrequests-issuer-selfsigned",
	"certificates-trigger",
	"certificates-issuing",
	"certificates-key-manager",
	"certificates-request-manager",
	"certificates-readiness",
	"certificates-revision-manager",
}

type options struct {
	kubeconfig          string
	clusterResourceNS   string
	namespace           string
	controllers         string
	autoApprove         bool
	workers             int
	metricsAddr         string
	healthzAddr         string
	qps                 float64
	burst               int
	minBackoff          time.Duration
	maxBackoff          time.Duration
	listControllersOnly bool
}

func parseFlags() *options {
	o := &options{}
	envApprove := os.Getenv("MESHSIGNER_CM_AUTO_APPROVE")
	fs := flag.CommandLine
	klog.InitFlags(fs) // -v=N and friends
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "path to the kubeconfig (default $KUBECONFIG)")
	fs.StringVar(&o.clusterResourceNS, "cluster-resource-namespace", "cert-manager",
		"namespace holding the Secrets that ClusterIssuers refer to")
	fs.StringVar(&o.namespace, "namespace", "", "watch only this namespace (default: all)")
	fs.StringVar(&o.controllers, "controllers", strings.Join(defaultControllers, ","),
		"comma-separated controllers to run")
	fs.BoolVar(&o.autoApprove, "auto-approve", envApprove == "1" || envApprove == "true",
		"also run "+approverName+", which approves every CertificateRequest (default from MESHSIGNER_CM_AUTO_APPROVE)")
	fs.IntVar(&o.workers, "workers", 2, "workers per controller")
	fs.StringVar(&o.metricsAddr, "metrics-listen-address", "127.0.0.1:0", "Prometheus /metrics address ('' disables)")
	fs.StringVar(&o.healthzAddr, "healthz-listen-address", "127.0.0.1:0", "/healthz and /readyz address ('' disables)")
	fs.Float64Var(&o.qps, "kube-api-qps", 50, "client QPS when API Priority and Fairness is off")
	fs.IntVar(&o.burst, "kube-api-burst", 100, "client burst when API Priority and Fairness is off")
	fs.DurationVar(&o.minBackoff, "certificate-request-minimum-backoff-duration", time.Hour,
		"first retry delay after a failed CertificateRequest of a Certificate")
	fs.DurationVar(&o.maxBackoff, "certificate-request-maximum-backoff-duration", 32*time.Hour,
		"largest retry delay after failed CertificateRequests of a Certificate")
	fs.BoolVar(&o.listControllersOnly, "list-controllers", false, "print the registered controller names and exit")
	flag.Parse()
	return o
}

// listen opens addr, which must be a loopback address, and reports the bound address on stderr.
func listen(what, addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("%s: %q is not a loopback IP address", what, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(os.Stderr, "cm-controller: %s listening on %s\n", what, ln.Addr())
	return ln, nil
}

func selectControllers(o *options) ([]string, error) {
	known := controller.Known()
	seen := map[string]bool{}
	var names []string
	add := func(n string) error {
		n = strings.TrimSpace(n)
		if n == "" || seen[n] {
			return nil
		}
		if _, ok := known[n]; !ok {
			return fmt.Errorf("unknown controller %q", n)
		}
		seen[n] = true
		names = append(names, n)
		return nil
	}
	for _, n := range strings.Split(o.controllers, ",") {
		if err := add(n); err != nil {
			return nil, err
		}
	}
	if o.autoApprove {
		if err := add(approverName); err != nil {
			return nil, err
		}
	}
	return names, nil
}

func run(o *options) error {
	if o.listControllersOnly {
		var all []string
		for n := range controller.Known() {
			all = append(all, n)
		}
		sort.Strings(all)
		fmt.Println(strings.Join(all, "\n"))
		return nil
	}
	if o.kubeconfig == "" {
		return errors.New("--kubeconfig (or KUBECONFIG) is required")
	}
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(map[string]bool{
		"ExperimentalCertificateSigningRequestControllers": true,
	}); err != nil {
		return fmt.Errorf("feature gates: %w", err)
	}
	names, err := selectControllers(o)
	if err != nil {
		return err
	}

	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx := logs.NewContext(sigCtx, logs.Log, "cm-controller")

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         o.kubeconfig,
		KubernetesAPIQPS:   float32(o.qps),
		KubernetesAPIBurst: o.burst,
		Namespace:          o.namespace,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: o.clusterResourceNS},
		CertificateOptions: controller.CertificateOptions{
			CopiedAnnotationPrefixes:                 []string{"*", "-kubectl.kubernetes.io/"},
			CertificateRequestMinimumBackoffDuration: o.minBackoff,
			CertificateRequestMaximumBackoffDuration: o.maxBackoff,
		},
	})
	if err != nil {
		return fmt.Errorf("context factory: %w", err)
	}
	base, err := factory.Build()
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}

	var ready atomic.Bool
	var servers []*http.Server
	if o.metricsAddr != "" {
		ln, err := listen("metrics", o.metricsAddr)
		if err != nil {
			return err
		}
		srv := base.Metrics.NewServer(ln)
		servers = append(servers, srv)
		go func() { _ = srv.Serve(ln) }()
	}
	if o.healthzAddr != "" {
		ln, err := listen("healthz", o.healthzAddr)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if !ready.Load() {
				http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok"))
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, srv)
		go func() { _ = srv.Serve(ln) }()
	}

	// Construct every controller first: constructors register the informers they need with the
	// shared factories, which are started only afterwards.
	type started struct {
		name string
		c    controller.Interface
	}
	var ctrls []started
	for _, n := range names {
		c, err := controller.Known()[n](factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", n, err)
		}
		ctrls = append(ctrls, started{n, c})
	}
	base.SharedInformerFactory.Start(ctx.Done())
	base.KubeSharedInformerFactory.Start(ctx.Done())
	base.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	var wg sync.WaitGroup
	errs := make(chan error, len(ctrls))
	for _, s := range ctrls {
		wg.Go(func() {
			if err := s.c.Run(o.workers, ctx); err != nil {
				errs <- fmt.Errorf("controller %s: %w", s.name, err)
				stop()
			}
		})
	}

	base.SharedInformerFactory.WaitForCacheSync(ctx.Done())
	base.KubeSharedInformerFactory.WaitForCacheSync(ctx.Done())
	if ctx.Err() == nil {
		ready.Store(true)
		fmt.Fprintf(os.Stderr, "cm-controller: ready; controllers: %s\n", strings.Join(names, ","))
	}

	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(shutdownCtx)
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func main() {
	logs.InitLogs()
	o := parseFlags()
	err := run(o)
	logs.FlushLogs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cm-controller: %v\n", err)
		os.Exit(1)
	}
}
