// Command yamuxpeer puts hashicorp/yamux, the implementation the yamux spec was
// written from, on the other end of a TCP connection from capsul's own
// multiplexer (protocol/mux.ts), so test/yamuxref.test.ts can show that both speak
// the same wire format: either side of the handshake, streams opened from either
// end, many at once, with flow control exercised by multi-MiB payloads.
//
//	yamuxpeer serve -listen 127.0.0.1:0 [-role server|client] [-open N] [-bytes B]
//	yamuxpeer dial  -addr 127.0.0.1:PORT [-role client|server] [-streams N] [-bytes B]
//
// Both modes echo every stream the other side opens. A serving peer also opens -open
// streams towards each connection; a dialing peer opens -streams and then hangs up.
// Each stream this program opens carries -bytes of a seeded pseudo-random pattern,
// written in irregular chunks, and the echo is compared with the same pattern as it
// arrives. Lines on stdout (the test waits for them):
//
//	ready addr=127.0.0.1:PORT role=ROLE      (serve, once listening)
//	opened streams: ok=N bad=M               (after the streams this side opened)
//
// dial exits 1 if any stream was bad. Built by scripts/build-go-peer.sh in GOPATH
// mode against Debian's golang-github-hashicorp-yamux-dev: no module downloads.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	// streamWindowBytes is the receive window this peer grants per stream. yamux's
	// default is 256 KiB; 6 MiB (frp's choice) lets single frames grow large, so the
	// other side's reassembly of big frames is exercised too.
	streamWindowBytes = 6 << 20
	// echoTimeout bounds one stream's whole exchange; a peer that stops moving bytes
	// fails that stream instead of hanging the test (whose own timeout is 240 s).
	echoTimeout = 60 * time.Second
	// maxChunkBytes is the largest single Write on an opened stream; sizes vary from 1
	// byte to this so frames of every size cross the wire.
	maxChunkBytes = 96 << 10
	// readBufBytes is the read buffer per opened stream when checking the echo.
	readBufBytes = 32 << 10
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("yamuxpeer: ")
	if len(os.Args) < 2 || (os.Args[1] != "serve" && os.Args[1] != "dial") {
		fmt.Fprintln(os.Stderr, "usage: yamuxpeer serve|dial [flags]  (yamuxpeer serve -h)")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "serve: TCP address to listen on")
	addr := fs.String("addr", "", "dial: TCP address to connect to")
	role := fs.String("role", "", "yamux side to play: client (odd stream ids) or server; default client for dial, server for serve")
	open := fs.Int("open", 0, "serve: streams to open towards each connection")
	streams := fs.Int("streams", 16, "dial: streams to open")
	size := fs.Int("bytes", 1<<20, "bytes sent (and expected back) on each stream this side opens")
	fs.Parse(os.Args[2:])
	if *role == "" {
		*role = map[string]string{"serve": "server", "dial": "client"}[mode]
	}
	if *role != "client" && *role != "server" {
		log.Fatalf("-role must be client or server, not %q", *role)
	}
	if *size < 0 || *open < 0 || *streams < 0 {
		log.Fatal("-bytes, -open and -streams must not be negative")
	}
	if mode == "serve" {
		serve(*listen, *role, *open, *size)
		return
	}
	if !dial(*addr, *role, *streams, *size) {
		os.Exit(1)
	}
}

// newSession runs yamux on c as the given side, with logging silenced (the test reads
// stdout, and yamux logs every peer hang-up as an error).
func newSession(c net.Conn, role string) (*yamux.Session, error) {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = streamWindowBytes
	cfg.LogOutput = io.Discard
	if role == "client" {
		return yamux.Client(c, cfg)
	}
	return yamux.Server(c, cfg)
}

func serve(listen, role string, open, size int) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ready addr=%s role=%s\n", ln.Addr(), role)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			sess, err := newSession(c, role)
			if err != nil {
				log.Printf("session: %v", err)
				c.Close()
				return
			}
			if open > 0 {
				go func() {
					ok, bad := openMany(sess, open, size)
					fmt.Printf("opened streams: ok=%d bad=%d\n", ok, bad)
				}()
			}
			echoIncoming(sess)
		}()
	}
}

func dial(addr, role string, streams, size int) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		log.Fatal(err)
	}
	sess, err := newSession(c, role)
	if err != nil {
		log.Fatal(err)
	}
	go echoIncoming(sess)
	ok, bad := openMany(sess, streams, size)
	fmt.Printf("opened streams: ok=%d bad=%d\n", ok, bad)
	sess.Close()
	return bad == 0
}

// echoIncoming sends back every byte of each stream the other side opens. This yamux
// has no half-close (a local Close also ends local reads), so a stream is closed
// only once the other side's FIN has been read, after the last byte went back.
func echoIncoming(sess *yamux.Session) {
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			defer st.Close()
			io.Copy(st, st)
		}()
	}
}

// openMany opens n streams at once and checks each one's echo.
func openMany(sess *yamux.Session, n, size int) (ok, bad int) {
	var good, failed int64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := exchange(sess, uint64(i)+1, size); err != nil {
				log.Printf("stream %d: %v", i, err)
				atomic.AddInt64(&failed, 1)
				return
			}
			atomic.AddInt64(&good, 1)
		}(i)
	}
	wg.Wait()
	return int(good), int(failed)
}

// exchange sends size bytes of pattern(seed) on a new stream in irregular chunks and
// compares what comes back with the same pattern, chunk by chunk as it arrives.
func exchange(sess *yamux.Session, seed uint64, size int) error {
	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(echoTimeout))
	wrote := make(chan error, 1)
	go func() { wrote <- sendPattern(st, seed, size) }()

	want := newPattern(seed)
	got := make([]byte, readBufBytes)
	exp := make([]byte, readBufBytes)
	for seen := 0; seen < size; {
		n, err := st.Read(got[:min(len(got), size-seen)])
		if n > 0 {
			want.fill(exp[:n])
			for i := 0; i < n; i++ {
				if got[i] != exp[i] {
					return fmt.Errorf("echo differs at byte %d of %d", seen+i, size)
				}
			}
			seen += n
		}
		if err != nil {
			return fmt.Errorf("after %d of %d echoed bytes: %w", seen, size, err)
		}
	}
	if err := <-wrote; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

func sendPattern(w io.Writer, seed uint64, size int) error {
	src := newPattern(seed)
	sizes := newPattern(^seed)
	buf := make([]byte, maxChunkBytes)
	var b [4]byte
	for left := size; left > 0; {
		sizes.fill(b[:])
		n := 1 + int(uint32(b[0])|uint32(b[1])<<8|uint32(b[2])<<16)%maxChunkBytes
		n = min(n, left)
		src.fill(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		left -= n
	}
	return nil
}

// pattern is a xorshift64* byte stream: the same seed gives the same bytes however
// the reads are split, which is what lets the echo be checked as it streams in.
type pattern struct {
	state uint64
	word  uint64
	left  int // unused bytes in word
}

func newPattern(seed uint64) *pattern {
	if seed == 0 {
		seed = 0x9e3779b97f4a7c15
	}
	return &pattern{state: seed}
}

func (p *pattern) fill(b []byte) {
	for i := range b {
		if p.left == 0 {
			p.state ^= p.state >> 12
			p.state ^= p.state << 25
			p.state ^= p.state >> 27
			p.word = p.state * 0x2545f4914f6cdd1d
			p.left = 8
		}
		b[i] = byte(p.word)
		p.word >>= 8
		p.left--
	}
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}
