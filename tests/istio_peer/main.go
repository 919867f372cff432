// Command istio-ca-peer asks a CA for a workload certificate through Istio's own CA client
// (istio.io/istio security/pkg/nodeagent/caclient/providers/citadel) and Istio's own CSR generator, exactly as
// pilot-agent does. meshsigner's tests use it as an independent conformance peer: it knows only Istio's proto.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"istio.io/istio/pkg/security"
	"istio.io/istio/security/pkg/credentialfetcher/plugin"
	"istio.io/istio/security/pkg/nodeagent/caclient/providers/citadel"
	pkiutil "istio.io/istio/security/pkg/pki/util"
)

func main() {
	caAddr := flag.String("ca-addr", "127.0.0.1:6443", "CA endpoint host:port")
	caSAN := flag.String("ca-san", "cert-manager-istio-csr.cert-manager.svc", "expected server name")
	rootCert := flag.String("root-cert", "", "PEM root file the server must chain to")
	tokenFile := flag.String("token-file", "", "service-account token file")
	clusterID := flag.String("cluster-id", "Kubernetes", "ClusterID header")
	trustDomain := flag.String("trust-domain", "cluster.local", "trust domain")
	namespace := flag.String("ns", "default", "workload namespace")
	serviceAccount := flag.String("sa", "default", "workload service account")
	ttl := flag.Int64("ttl", 86400, "requested lifetime in seconds (pilot-agent's SECRET_TTL default)")
	ecdsa := flag.Bool("ecdsa", false, "ECDSA P-256 key instead of RSA 2048")
	outDir := flag.String("out-dir", "", "where key.pem and cert-chain.pem go")
	flag.Parse()

	opts := &security.Options{
		CAEndpoint:    *caAddr,
		CAEndpointSAN: *caSAN,
		ClusterID:     *clusterID,
		CredFetcher:   plugin.CreateTokenPlugin(*tokenFile),
	}
	client, err := citadel.NewCitadelClient(opts, &citadel.TLSOptions{RootCert: *rootCert})
	if err != nil {
		fail("client", err)
	}
	defer client.Close()

	certOpts := pkiutil.CertOptions{
		Host:       fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", *trustDomain, *namespace, *serviceAccount),
		RSAKeySize: 2048,
	}
	if *ecdsa {
		certOpts.ECSigAlg = pkiutil.EcdsaSigAlg
	}
	csrPEM, keyPEM, err := pkiutil.GenCSR(certOpts)
	if err != nil {
		fail("csr", err)
	}
	chain, err := client.CSRSign(csrPEM, *ttl)
	if err != nil {
		fail("sign", err)
	}
	if *outDir != "" {
		must(os.WriteFile(filepath.Join(*outDir, "key.pem"), keyPEM, 0o600))
		must(os.WriteFile(filepath.Join(*outDir, "cert-chain.pem"), []byte(strings.Join(chain, "")), 0o644))
	}
	must(json.NewEncoder(os.Stdout).Encode(map[string]any{"certChain": chain}))
}

func fail(stage string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", stage, err)
	os.Exit(1)
}

func must(err error) {
	if err != nil {
		fail("write", err)
	}
}
