// imagegate-registry: an in-memory OCI distribution registry for imagegate's test bed.
//
// It wraps go-containerregistry's pkg/registry with the OCI 1.1 referrers API turned on
// (`crane registry serve` leaves it off) and made to follow the spec (referrers.go), listens on loopback only, and prints the address it
// bound so that a caller passing port 0 learns the port it got.
package main

import (
	"crypto/subtle"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
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
	basicAuth := flag.String(
		"basic-auth", "",
		"user:password that every request must carry as HTTP Basic auth (empty: no auth), "+
			"to act like a private registry",
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
		Handler:           requireBasicAuth(referrersHandler(handler, *filterReferrers), *basicAuth),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(server.Serve(listener))
}

// requireBasicAuth answers 401 with a Basic challenge to any request without the credentials.
func requireBasicAuth(next http.Handler, userPassword string) http.Handler {
	if userPassword == "" {
		return next
	}
	wantUser, wantPassword, _ := strings.Cut(userPassword, ":")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, password, ok := r.BasicAuth()
		userOK := subtle.ConstantTimeCompare([]byte(user), []byte(wantUser)) == 1
		passwordOK := subtle.ConstantTimeCompare([]byte(password), []byte(wantPassword)) == 1
		if !ok || !userOK || !passwordOK {
			w.Header().Set("WWW-Authenticate", `Basic realm="imagegate-registry"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
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
