// xdsprobe plays the application half of a proxyless gRPC workload: like grpc-go's xDS client, it reads the
// bootstrap file pilot-agent generated (GRPC_XDS_BOOTSTRAP), connects to the agent's local XDS socket with the
// node identity written there, and asks for listeners by name. pilot-agent forwards the stream to istiod over its
// own TLS connection, so every response printed here came from istiod through the agent.
//
// Output: one JSON line per response ({"typeUrl", "versionInfo", "nonce", "resources": [names]}), then the stream
// is held open (acknowledging pushes) until the process is stopped, so istiod lists the proxy as connected.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"istio.io/istio/pkg/istio-agent/grpcxds"
)

const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

type responseLine struct {
	TypeURL     string   `json:"typeUrl"`
	VersionInfo string   `json:"versionInfo"`
	Nonce       string   `json:"nonce"`
	Resources   []string `json:"resources"`
}

func main() {
	bootstrapPath := flag.String("bootstrap", "./etc/istio/proxy/grpc-bootstrap.json", "pilot-agent's gRPC bootstrap")
	listeners := flag.String("listeners", "", "comma-separated listener names (host:port) to ask for")
	root := flag.String("root", "/", "the pod's root: the bootstrap's unix:/// socket path is read below it, as the "+
		"application container sees the agent's /etc/istio/proxy volume")
	flag.Parse()
	if err := run(*bootstrapPath, *root, strings.Split(*listeners, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "xdsprobe:", err)
		os.Exit(1)
	}
}

func run(bootstrapPath, root string, names []string) error {
	bootstrap, err := grpcxds.LoadBootstrap(bootstrapPath)
	if err != nil {
		return fmt.Errorf("reading bootstrap: %w", err)
	}
	if len(bootstrap.XDSServers) == 0 || bootstrap.Node == nil {
		return fmt.Errorf("bootstrap %s has no xds server or node", bootstrapPath)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	target := bootstrap.XDSServers[0].ServerURI
	if socket, ok := strings.CutPrefix(target, "unix:///"); ok {
		target = "unix://" + filepath.Join(root, socket)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dialing %s: %w", target, err)
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("opening the ADS stream: %w", err)
	}
	if err := stream.Send(request(bootstrap.Node, names, "", "")); err != nil {
		return fmt.Errorf("sending the listener request: %w", err)
	}
	out := json.NewEncoder(os.Stdout)
	for {
		response, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receiving: %w", err)
		}
		line := responseLine{TypeURL: response.GetTypeUrl(), VersionInfo: response.GetVersionInfo(), Nonce: response.GetNonce()}
		for _, resource := range response.GetResources() {
			name := resource.GetTypeUrl()
			var l listener.Listener
			if resource.GetTypeUrl() == listenerType && resource.UnmarshalTo(&l) == nil {
				name = l.GetName()
			}
			line.Resources = append(line.Resources, name)
		}
		if err := out.Encode(line); err != nil {
			return err
		}
		// Acknowledge, as any xDS client does, so istiod records the version as applied.
		if err := stream.Send(request(nil, names, response.GetVersionInfo(), response.GetNonce())); err != nil {
			return fmt.Errorf("acknowledging: %w", err)
		}
	}
}

func request(node *core.Node, names []string, version, nonce string) *discovery.DiscoveryRequest {
	return &discovery.DiscoveryRequest{
		Node:          node,
		TypeUrl:       listenerType,
		ResourceNames: names,
		VersionInfo:   version,
		ResponseNonce: nonce,
	}
}
