// Command istiod-ca runs Istio's own CA gRPC service on its own, wired the way istiod wires it when a JWT rule is
// configured: security/pkg/pki/ca over a plugged root (ECDSA P-256), the JWT authenticator of
// security/pkg/server/ca/authenticate against a JWKS served on 127.0.0.1 by this process, Istio's client-certificate
// authenticator, and pilot's gRPC server options (keepalive defaults) with a TLS 1.2+ listener accepting optional
// client certificates. meshsigner's side-by-side benchmark (bench/bench_vs_istiod.py) drives it.
//
//	istiod-ca -init-ca DIR                    writes DIR/root-cert.pem and DIR/ca-key.pem (ECDSA P-256) and exits
//	istiod-ca -ca-dir DIR -jwks-file F ...    serves until SIGTERM
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/api/security/v1beta1"
	istiogrpc "istio.io/istio/pilot/pkg/grpc"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/keepalive"
	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/pki/ca"
	pkiutil "istio.io/istio/security/pkg/pki/util"
	caserver "istio.io/istio/security/pkg/server/ca"
	"istio.io/istio/security/pkg/server/ca/authenticate"
)

const (
	rootFile = "root-cert.pem"
	keyFile  = "ca-key.pem"
)

func main() {
	initCA := flag.String("init-ca", "", "write a new ECDSA P-256 root into this folder and exit")
	servingOut := flag.String("serving-out", "", "with -init-ca: also write a serving key and certificate "+
		"for -server-name from that root into this folder (for the no-op transport floor)")
	caDir := flag.String("ca-dir", "", "folder holding root-cert.pem and ca-key.pem")
	addr := flag.String("addr", "127.0.0.1:15012", "gRPC listen address (loopback)")
	serverName := flag.String("server-name", "istiod.istio-system.svc", "DNS name of the serving certificate")
	jwksFile := flag.String("jwks-file", "", "JWKS of the token issuer, served on 127.0.0.1 to the JWT authenticator")
	issuer := flag.String("issuer", "", "expected iss claim")
	audience := flag.String("audience", "istio-ca", "expected aud claim")
	trustDomain := flag.String("trust-domain", "cluster.local", "trust domain of the issued SPIFFE IDs")
	defaultTTL := flag.Duration("default-ttl", 24*time.Hour, "istiod's DEFAULT_WORKLOAD_CERT_TTL")
	maxTTL := flag.Duration("max-ttl", 90*24*time.Hour, "istiod's MAX_WORKLOAD_CERT_TTL")
	flag.Parse()

	if *initCA != "" {
		must("init-ca", writeRoot(*initCA))
		if *servingOut != "" {
			must("serving-out", writeServing(*initCA, *servingOut, *serverName))
		}
		return
	}
	if *caDir == "" || *jwksFile == "" || *issuer == "" {
		fail("flags", errors.New("-ca-dir, -jwks-file and -issuer are required"))
	}
	rootPEM, err := os.ReadFile(filepath.Join(*caDir, rootFile))
	must("read root", err)
	keyPEM, err := os.ReadFile(filepath.Join(*caDir, keyFile))
	must("read key", err)
	// A plugged root signs directly: the root is the signing certificate and the whole trust bundle.
	bundle, err := pkiutil.NewVerifiedKeyCertBundleFromPem(rootPEM, keyPEM, nil, rootPEM, nil)
	must("key-cert bundle", err)
	istioCA, err := ca.NewIstioCA(&ca.IstioCAOptions{DefaultCertTTL: *defaultTTL, MaxCertTTL: *maxTTL, KeyCertBundle: bundle})
	must("ca", err)

	jwksURL, err := serveJWKS(*jwksFile)
	must("jwks", err)
	meshConfig := mesh.DefaultMeshConfig()
	meshConfig.TrustDomain = *trustDomain
	jwt, err := authenticate.NewJwtAuthenticator(
		&v1beta1.JWTRule{Issuer: *issuer, JwksUri: jwksURL, Audiences: []string{*audience}}, fixedMesh{meshConfig})
	must("jwt authenticator", err)
	service, err := caserver.New(istioCA, *maxTTL, []security.Authenticator{&authenticate.ClientCertAuthenticator{}, jwt}, nil)
	must("ca server", err)

	serving, err := servingCertificate(bundle, *serverName)
	must("serving certificate", err)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS12,
	}
	options := istiogrpc.ServerOptions(keepalive.DefaultOption(), func(int64) {})
	options = append(options, grpc.Creds(credentials.NewTLS(tlsConfig)))
	grpcServer := grpc.NewServer(options...)
	service.Register(grpcServer)

	listener, err := net.Listen("tcp", *addr)
	must("listen", err)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		grpcServer.Stop()
	}()
	fmt.Fprintf(os.Stderr, "istiod-ca serving on %s\n", listener.Addr())
	if err := grpcServer.Serve(listener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		fail("serve", err)
	}
}

// writeRoot makes the shared benchmark root with Istio's own certificate helper.
func writeRoot(dir string) error {
	certPEM, keyPEM, err := pkiutil.GenCertKeyFromOptions(pkiutil.CertOptions{
		TTL:          10 * 365 * 24 * time.Hour,
		Org:          "cluster.local",
		IsCA:         true,
		IsSelfSigned: true,
		ECSigAlg:     pkiutil.EcdsaSigAlg,
		ECCCurve:     pkiutil.P256Curve,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, keyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, rootFile), certPEM, 0o644)
}

// writeServing writes serving-cert.pem and serving-key.pem for name, issued from the root in caDir.
func writeServing(caDir, outDir, name string) error {
	bundle, err := pkiutil.NewVerifiedKeyCertBundleFromFile(
		filepath.Join(caDir, rootFile), filepath.Join(caDir, keyFile), nil, filepath.Join(caDir, rootFile), "")
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := servingPEM(bundle, name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, "serving-key.pem"), keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(outDir, "serving-cert.pem"), certPEM, 0o644)
}

// servingCertificate issues the listener's certificate from the root, as istiod's own DNS certificate would be.
func servingCertificate(bundle *pkiutil.KeyCertBundle, name string) (tls.Certificate, error) {
	certPEM, keyPEM, err := servingPEM(bundle, name)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

func servingPEM(bundle *pkiutil.KeyCertBundle, name string) ([]byte, []byte, error) {
	signerCert, signerKey, _, _ := bundle.GetAll()
	return pkiutil.GenCertKeyFromOptions(pkiutil.CertOptions{
		Host:       name,
		TTL:        24 * time.Hour,
		SignerCert: signerCert,
		SignerPriv: *signerKey,
		IsServer:   true,
		ECSigAlg:   pkiutil.EcdsaSigAlg,
		ECCCurve:   pkiutil.P256Curve,
	})
}

// serveJWKS serves the issuer's key set on 127.0.0.1; the authenticator fetches it once and caches the keys.
func serveJWKS(path string) (string, error) {
	body, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = server.Serve(listener) }()
	return fmt.Sprintf("http://%s/jwks", listener.Addr()), nil
}

// fixedMesh is a mesh.Watcher whose configuration never changes (istiod's comes from a ConfigMap).
type fixedMesh struct{ config *meshconfig.MeshConfig }

func (f fixedMesh) Mesh() *meshconfig.MeshConfig { return f.config }

func (f fixedMesh) AddMeshHandler(func()) *mesh.WatcherHandlerRegistration {
	return mesh.NewWatcherHandlerRegistration(func() {})
}

func (f fixedMesh) DeleteMeshHandler(*mesh.WatcherHandlerRegistration) {}

func must(stage string, err error) {
	if err != nil {
		fail(stage, err)
	}
}

func fail(stage string, err error) {
	fmt.Fprintf(os.Stderr, "istiod-ca: %s: %v\n", stage, err)
	os.Exit(1)
}
