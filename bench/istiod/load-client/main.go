// Command ca-load drives an Istio CA endpoint (istiod's CA or meshsigner) with prepared work, so that the
// client's own CPU stays small and off the server's books. bench/bench_vs_istiod.py runs it and reads its output.
//
// It talks over stdin/stdout so that the caller can read the server's CPU counters exactly around the timed part:
//
//	load  prepares agent-shaped CSRs (Istio's GenCSR, ECDSA P-256) for every identity of -work, opens -connections
//	      TLS connections, sends -warmup calls at -concurrency and checks every response (URI SAN, chain to the
//	      root, lifetime, public key) and that a token with a broken signature is refused; prints "warm", waits for
//	      a line on stdin, sends -requests calls and prints one JSON line of results.
//	first prepares one CSR, prints "prepared", waits for a line on stdin, then asks for a certificate over a new
//	      connection every 5 ms until one arrives; prints one JSON line. Measures a server's start to first
//	      certificate when the caller starts the server just before that line.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "istio.io/api/security/v1alpha1"
	pkiutil "istio.io/istio/security/pkg/pki/util"
)

type identity struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	Token          string `json:"token"`
}

type workFile struct {
	TrustDomain string     `json:"trustDomain"`
	Identities  []identity `json:"identities"`
	BadToken    string     `json:"badToken"` // a valid token whose signature was altered
}

type prepared struct {
	spiffeID string
	token    string
	csrPEM   string
}

type config struct {
	addr, rootFile, serverName, workPath, clusterID string
	concurrency, connections, requests, warmup      int
	validity                                        int64
	insecure, noCheck                               bool
}

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "load" && os.Args[1] != "first") {
		fmt.Fprintln(os.Stderr, "usage: ca-load load|first [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	var cfg config
	flags := flag.NewFlagSet(mode, flag.ExitOnError)
	flags.StringVar(&cfg.addr, "addr", "", "CA endpoint host:port (loopback)")
	flags.StringVar(&cfg.rootFile, "root", "", "PEM root every chain must lead to")
	flags.StringVar(&cfg.serverName, "server-name", "", "expected DNS name of the serving certificate")
	flags.StringVar(&cfg.workPath, "work", "", "JSON file of identities and tokens")
	flags.StringVar(&cfg.clusterID, "cluster-id", "Kubernetes", "ClusterID header, as pilot-agent sends it")
	flags.IntVar(&cfg.concurrency, "concurrency", 1, "calls in flight")
	flags.IntVar(&cfg.connections, "connections", 1, "TLS connections the callers share")
	flags.IntVar(&cfg.requests, "requests", 1000, "timed calls")
	flags.IntVar(&cfg.warmup, "warmup", 200, "checked calls before the timed ones")
	flags.Int64Var(&cfg.validity, "validity", 3600, "requested lifetime in seconds")
	flags.BoolVar(&cfg.insecure, "insecure", false, "plaintext HTTP/2 (only for the no-op transport floor)")
	flags.BoolVar(&cfg.noCheck, "no-check", false, "skip the warm-up checks (only for the no-op transport floor)")
	_ = flags.Parse(os.Args[2:])

	work, err := loadWork(cfg.workPath)
	must("work file", err)
	root, err := os.ReadFile(cfg.rootFile)
	must("root", err)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		fail("root", errors.New("no certificate in the root file"))
	}
	creds := credentials.NewClientTLSFromCert(roots, cfg.serverName)
	if cfg.insecure {
		creds = insecure.NewCredentials()
	}
	stdin := bufio.NewReader(os.Stdin)
	if mode == "first" {
		items, err := prepare(work, 1)
		must("prepare", err)
		fmt.Println("prepared")
		waitLine(stdin)
		attempts, err := firstCertificate(cfg, creds, items[0], roots)
		must("first certificate", err)
		emit(map[string]any{"ok": true, "attempts": attempts})
		return
	}
	runLoad(cfg, creds, work, roots, stdin)
}

func runLoad(cfg config, creds credentials.TransportCredentials, work workFile, roots *x509.CertPool, stdin *bufio.Reader) {
	items, err := prepare(work, len(work.Identities))
	must("prepare", err)
	conns := make([]*grpc.ClientConn, max(1, min(cfg.connections, cfg.concurrency)))
	for i := range conns {
		conns[i], err = dial(cfg.addr, creds)
		must("dial", err)
		defer conns[i].Close()
	}
	clients := make([]pb.IstioCertificateServiceClient, len(conns))
	for i, conn := range conns {
		clients[i] = pb.NewIstioCertificateServiceClient(conn)
	}

	// Warm-up: every response is checked, so both servers are known to do the real work.
	var checkErr atomic.Value
	run(cfg.warmup, cfg.concurrency, clients, items, cfg, func(item prepared, chain []string, err error, _ time.Duration) {
		if err == nil && !cfg.noCheck {
			err = checkChain(item, chain, roots, cfg.validity)
		}
		if err != nil {
			checkErr.CompareAndSwap(nil, fmt.Errorf("%s: %w", item.spiffeID, err))
		}
	})
	if stored := checkErr.Load(); stored != nil {
		fail("warm-up check", stored.(error))
	}
	bad := items[0]
	bad.token = work.BadToken
	if _, err := call(clients[0], bad, cfg); !cfg.noCheck && status.Code(err) != codes.Unauthenticated {
		fail("broken-signature token", fmt.Errorf("want Unauthenticated, got %v", err))
	}
	fmt.Println("warm")
	waitLine(stdin)

	latencies := make([]time.Duration, 0, cfg.requests)
	var mu sync.Mutex
	var failures atomic.Int64
	var firstErr atomic.Value
	cpuBefore := ownCPU()
	started := time.Now()
	run(cfg.requests, cfg.concurrency, clients, items, cfg, func(_ prepared, chain []string, err error, took time.Duration) {
		if err == nil && len(chain) < 2 {
			err = errors.New("short chain")
		}
		if err != nil {
			failures.Add(1)
			firstErr.CompareAndSwap(nil, err.Error())
			return
		}
		mu.Lock()
		latencies = append(latencies, took)
		mu.Unlock()
	})
	elapsed := time.Since(started)
	clientCPU := ownCPU() - cpuBefore
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	result := map[string]any{
		"requests":      cfg.requests,
		"errors":        failures.Load(),
		"seconds":       elapsed.Seconds(),
		"rate":          float64(len(latencies)) / elapsed.Seconds(),
		"p50_ms":        percentile(latencies, 0.50),
		"p99_ms":        percentile(latencies, 0.99),
		"client_cpu_ms": clientCPU.Seconds() * 1000,
		"connections":   len(conns),
		"warmup":        cfg.warmup,
	}
	if e := firstErr.Load(); e != nil {
		result["first_error"] = e
	}
	emit(result)
}

// run sends `total` calls with `concurrency` callers; caller i uses connection i mod len(clients).
func run(total, concurrency int, clients []pb.IstioCertificateServiceClient, items []prepared, cfg config,
	done func(prepared, []string, error, time.Duration),
) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < concurrency; c++ {
		wg.Add(1)
		go func(client pb.IstioCertificateServiceClient) {
			defer wg.Done()
			for {
				n := int(next.Add(1)) - 1
				if n >= total {
					return
				}
				item := items[n%len(items)]
				started := time.Now()
				chain, err := call(client, item, cfg)
				done(item, chain, err, time.Since(started))
			}
		}(clients[c%len(clients)])
	}
	wg.Wait()
}

func call(client pb.IstioCertificateServiceClient, item prepared, cfg config) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+item.token, "ClusterID", cfg.clusterID)
	response, err := client.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: item.csrPEM, ValidityDuration: cfg.validity})
	if err != nil {
		return nil, err
	}
	return response.CertChain, nil
}

// checkChain: the leaf names the caller's SPIFFE ID, carries the CSR's key, lives about as long as asked, and
// chains through the sent intermediates to the root; the last element is the root itself.
func checkChain(item prepared, chain []string, roots *x509.CertPool, validity int64) error {
	if len(chain) < 2 {
		return fmt.Errorf("chain of %d elements", len(chain))
	}
	certs := make([]*x509.Certificate, 0, len(chain))
	for _, element := range chain {
		rest := []byte(element)
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return err
			}
			certs = append(certs, cert)
		}
	}
	if len(certs) < 2 {
		return errors.New("fewer than two certificates")
	}
	leaf := certs[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != item.spiffeID {
		return fmt.Errorf("leaf URI SANs %v", leaf.URIs)
	}
	intermediates := x509.NewCertPool()
	for _, cert := range certs[1 : len(certs)-1] {
		intermediates.AddCert(cert)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return err
	}
	if _, err := certs[len(certs)-1].Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		return fmt.Errorf("last element is not the root: %w", err)
	}
	lifetime := leaf.NotAfter.Sub(time.Now()).Seconds()
	if lifetime > float64(validity)+60 || lifetime < float64(validity)-600 {
		return fmt.Errorf("remaining lifetime %.0fs for %ds asked", lifetime, validity)
	}
	block, _ := pem.Decode([]byte(item.csrPEM))
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err
	}
	if !bytes.Equal(csr.RawSubjectPublicKeyInfo, leaf.RawSubjectPublicKeyInfo) {
		return errors.New("leaf key differs from the CSR's")
	}
	return nil
}

func firstCertificate(cfg config, creds credentials.TransportCredentials, item prepared, roots *x509.CertPool) (int, error) {
	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; time.Now().Before(deadline); attempt++ {
		conn, err := grpc.NewClient(cfg.addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return attempt, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+item.token, "ClusterID", cfg.clusterID)
		response, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx,
			&pb.IstioCertificateRequest{Csr: item.csrPEM, ValidityDuration: cfg.validity})
		cancel()
		_ = conn.Close()
		if err == nil {
			return attempt, checkChain(item, response.CertChain, roots, cfg.validity)
		}
		if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
			return attempt, err // the server answered, and said no
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0, errors.New("no certificate within 60 s")
}

func dial(addr string, creds credentials.TransportCredentials) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	conn.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if !conn.WaitForStateChange(ctx, state) {
			return nil, fmt.Errorf("connection to %s not ready: %v", addr, state)
		}
	}
	return conn, nil
}

func prepare(work workFile, count int) ([]prepared, error) {
	items := make([]prepared, 0, count)
	for _, id := range work.Identities[:count] {
		spiffeID := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", work.TrustDomain, id.Namespace, id.ServiceAccount)
		csrPEM, _, err := pkiutil.GenCSR(pkiutil.CertOptions{Host: spiffeID, ECSigAlg: pkiutil.EcdsaSigAlg})
		if err != nil {
			return nil, err
		}
		items = append(items, prepared{spiffeID: spiffeID, token: id.Token, csrPEM: string(csrPEM)})
	}
	return items, nil
}

func loadWork(path string) (workFile, error) {
	var work workFile
	body, err := os.ReadFile(path)
	if err != nil {
		return work, err
	}
	if err := json.Unmarshal(body, &work); err != nil {
		return work, err
	}
	if len(work.Identities) == 0 || work.BadToken == "" {
		return work, errors.New("work file needs identities and a badToken")
	}
	return work, nil
}

func percentile(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	index := int(float64(len(sorted))*q+0.999999) - 1
	return float64(sorted[max(0, min(index, len(sorted)-1))].Microseconds()) / 1000
}

func ownCPU() time.Duration {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

func waitLine(stdin *bufio.Reader) {
	if _, err := stdin.ReadString('\n'); err != nil {
		fail("stdin", err)
	}
}

func emit(value map[string]any) {
	must("output", json.NewEncoder(os.Stdout).Encode(value))
}

func must(stage string, err error) {
	if err != nil {
		fail(stage, err)
	}
}

func fail(stage string, err error) {
	fmt.Fprintf(os.Stderr, "ca-load: %s: %v\n", stage, err)
	os.Exit(1)
}
