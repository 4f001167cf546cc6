// imagegate-registry: an in-memory OCI distribution registry for imagegate's test bed.
//
// It wraps go-containerregistry's pkg/registry with the OCI 1.1 referrers API turned on
// (`crane registry serve` leaves it off) and made to follow the spec (referrers.go), listens on loopback only, and prints the address it
// bound so that a caller passing port 0 learns the port it got.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "host:port to listen on (loopback only)")
	referrersAPI := flag.Bool(
		"referrers", true,
		"serve the OCI 1.1 referrers API (false: 404, as registries without it do)",
	)
	filterReferrers := flag.Bool(
		"referrers-filter", true,
		"apply the referrers artifactType filter (false: ignore it, as some registries do)",
	)
	showVersion := flag.Bool("version", false, "print the go-containerregistry version and exit")
	flag.Parse()

	if *showVersion {
		fmt.Println("imagegate-registry, go-containerregistry", registryModuleVersion())
		return
	}

	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("imagegate-registry: bad -addr %q: %v", *addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		log.Fatalf("imagegate-registry: refusing to listen on non-loopback address %q", host)
	}

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("imagegate-registry: cannot listen on %s: %v", *addr, err)
	}
	// The first line on stdout is the contract with the Python side: "listening on HOST:PORT".
	fmt.Fprintf(os.Stdout, "listening on %s\n", listener.Addr().String())

	handler := registry.New(
		registry.WithReferrersSupport(*referrersAPI),
		registry.Logger(log.New(os.Stderr, "", log.LstdFlags)),
	)
	server := &http.Server{
		Handler:           referrersHandler(handler, *filterReferrers),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(server.Serve(listener))
}

// registryModuleVersion reports the go-containerregistry version linked in, so the test bed's
// cache can tell a binary built from another version apart.
func registryModuleVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path == "github.com/google/go-containerregistry" {
			return dep.Version
		}
	}
	return "unknown"
}
