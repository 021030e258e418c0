// Command gopeer is the bench's yardstick: a small SNI-routing reverse tunnel in Go on
// hashicorp/yamux (the multiplexer frp and threshold use), built to do what capsul's
// hub and cog do on the data path and nothing more, so the bench can set capsul's
// numbers against a compiled peer doing the same work.
//
//	visitor --TLS--> hub -public   (reads the SNI of the first record, never terminates TLS)
//	                  |  one TLS 1.3 connection per cog, yamux on top; the hub opens a stream per visitor
//	                 cog --TCP--> target (e.g. nginx, which terminates the visitor's TLS)
//
//	gopeer hub -public 127.0.0.1:0 -tunnel 127.0.0.1:0 -cert hub.crt -key hub.key
//	gopeer cog -hub 127.0.0.1:PORT -name home1 -route a.test=127.0.0.1:9443 [-hub-cert hub.crt]
//
// It is a benchmark peer, not a product: the tunnel has no client authentication, and
// without -hub-cert the cog trusts any hub. See README.md for the wire and the limits.
// Built by scripts/build-go-peer.sh in GOPATH mode against Debian's packages.
package main

import (
	"fmt"
	"io"
	"log"
	"os"

	"github.com/hashicorp/yamux"
)

// tuning holds the flags hub and cog share.
type tuning struct {
	window   uint // yamux MaxStreamWindowSize; 0 keeps yamux's 256 KiB
	coalesce bool // join each data frame's header and body into one tunnel write
	bufBytes int  // copy buffer per direction per proxied connection
	verbose  bool // log every connection-level failure
}

const (
	minWindowBytes = 256 << 10 // yamux refuses a smaller window than its initial one
	maxWindowBytes = 1 << 31
	minBufBytes    = 4 << 10
	maxBufBytes    = 1 << 20
	// defaultBufBytes matches io.Copy's own buffer; idle memory per connection is
	// dominated by it (two per proxied connection while blocked in Read).
	defaultBufBytes = 32 << 10
)

var opts tuning

func (t *tuning) check() {
	if t.window != 0 && (t.window < minWindowBytes || t.window > maxWindowBytes) {
		log.Fatalf("-window must be 0 or between %d and %d bytes", minWindowBytes, maxWindowBytes)
	}
	if t.bufBytes < minBufBytes || t.bufBytes > maxBufBytes {
		log.Fatalf("-buf must be between %d and %d bytes", minBufBytes, maxBufBytes)
	}
	initBuffers(t.bufBytes)
}

func (t *tuning) muxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = io.Discard // yamux logs every peer hang-up
	if t.window != 0 {
		c.MaxStreamWindowSize = uint32(t.window)
	}
	return c
}

func debugf(format string, args ...interface{}) {
	if opts.verbose {
		log.Printf(format, args...)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: gopeer hub|cog [flags]   (gopeer hub -h, gopeer cog -h)")
	os.Exit(2)
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "hub":
		runHub(os.Args[2:])
	case "cog":
		runCog(os.Args[2:])
	default:
		usage()
	}
}
