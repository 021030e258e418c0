package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	// helloTimeout: a visitor has this long to deliver its first TLS record.
	helloTimeout = 5 * time.Second
	// setupTimeout bounds the tunnel's TLS handshake and hello line, and the cog's
	// read of a stream's route header.
	setupTimeout = 10 * time.Second
	// maxHelloLineBytes bounds the cog's hello line: the name plus its host list.
	maxHelloLineBytes = 4096
	// openAttempts: a visitor is offered to this many cog sessions (round-robin) before
	// it is dropped, so one session that just died does not cost the visitor.
	openAttempts = 3
	// acceptRetryDelay: pause after a failed Accept (e.g. EMFILE) instead of spinning.
	acceptRetryDelay = 10 * time.Millisecond
	// helloPrefix starts the cog's one-line hello on the tunnel:
	// "gopeer/1 NAME HOST[,HOST...]\n"; the hub answers "ok\n" or "refused REASON\n".
	helloPrefix = "gopeer/1 "
)

// cogLink is one cog's live tunnel session.
type cogLink struct {
	name  string
	hosts []string
	sess  *yamux.Session
}

// routes maps a hostname ("a.test" or "*.test") to the cog links serving it; visitors
// of a hostname served by several links are spread round-robin.
type routes struct {
	mu     sync.RWMutex
	byHost map[string][]*cogLink
	turn   uint32
}

func (r *routes) add(l *cogLink) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range l.hosts {
		r.byHost[h] = append(r.byHost[h], l)
	}
}

func (r *routes) remove(l *cogLink) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range l.hosts {
		kept := make([]*cogLink, 0, len(r.byHost[h]))
		for _, x := range r.byHost[h] {
			if x != l {
				kept = append(kept, x)
			}
		}
		if len(kept) == 0 {
			delete(r.byHost, h)
		} else {
			r.byHost[h] = kept
		}
	}
}

// pick: the exact hostname first, then the wildcard one label up.
func (r *routes) pick(host string) *cogLink {
	r.mu.RLock()
	defer r.mu.RUnlock()
	links := r.byHost[host]
	if len(links) == 0 {
		if dot := strings.IndexByte(host, '.'); dot > 0 {
			links = r.byHost["*"+host[dot:]]
		}
	}
	if len(links) == 0 {
		return nil
	}
	return links[atomic.AddUint32(&r.turn, 1)%uint32(len(links))]
}

var helloPool = sync.Pool{New: func() interface{} { b := make([]byte, 1+maxHostBytes+maxRecordBytes); return &b }}

type hub struct {
	routes routes
	tlsCfg *tls.Config
}

func runHub(args []string) {
	fs := flag.NewFlagSet("hub", flag.ExitOnError)
	public := fs.String("public", "127.0.0.1:12443", "visitors' TCP address (TLS passed through, routed by SNI)")
	tunnelAddr := fs.String("tunnel", "127.0.0.1:12444", "cogs' tunnel address (TLS 1.3)")
	certFile := fs.String("cert", "", "tunnel certificate (PEM)")
	keyFile := fs.String("key", "", "tunnel key (PEM)")
	sharedFlags(fs)
	fs.Parse(args)
	opts.check()
	if *certFile == "" || *keyFile == "" {
		log.Fatal("hub: -cert and -key are required")
	}
	pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("hub: %v", err)
	}
	h := &hub{
		routes: routes{byHost: map[string][]*cogLink{}},
		tlsCfg: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13},
	}
	tl, err := net.Listen("tcp", *tunnelAddr)
	if err != nil {
		log.Fatalf("hub: %v", err)
	}
	pl, err := net.Listen("tcp", *public)
	if err != nil {
		log.Fatalf("hub: %v", err)
	}
	log.Printf("gopeer hub ready public=%s tunnel=%s window=%d join=%v buf=%d",
		pl.Addr(), tl.Addr(), opts.muxConfig().MaxStreamWindowSize, opts.coalesce, bufBytes)
	go serveTCP(tl, h.tunnel)
	serveTCP(pl, h.visitor)
}

func sharedFlags(fs *flag.FlagSet) {
	fs.UintVar(&opts.window, "window", 0, "yamux MaxStreamWindowSize, bytes (0: yamux's 256 KiB); set it on hub and cog alike")
	fs.BoolVar(&opts.coalesce, "coalesce", true, "write each yamux data frame's header and body as one TLS write")
	fs.IntVar(&opts.bufBytes, "buf", defaultBufBytes, "copy buffer per direction per connection, bytes")
	fs.BoolVar(&opts.verbose, "v", false, "log every connection error")
}

func serveTCP(l net.Listener, handle func(*net.TCPConn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			debugf("accept: %v", err)
			time.Sleep(acceptRetryDelay)
			continue
		}
		tc := c.(*net.TCPConn)
		tc.SetNoDelay(true)
		go handle(tc)
	}
}

// tunnel: TLS, the cog's hello line, "ok", then yamux with the hub as client (it
// opens one stream per visitor).
func (h *hub) tunnel(raw *net.TCPConn) {
	c := tls.Server(raw, h.tlsCfg)
	c.SetDeadline(time.Now().Add(setupTimeout))
	in := bufio.NewReaderSize(c, maxHelloLineBytes)
	name, hosts, err := readHello(in)
	if err != nil {
		debugf("tunnel %s: %v", raw.RemoteAddr(), err)
		fmt.Fprintf(c, "refused %v\n", err)
		c.Close()
		return
	}
	if _, err := c.Write([]byte("ok\n")); err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	sess, err := yamux.Client(newTunnelConn(c, in, opts.coalesce), opts.muxConfig())
	if err != nil {
		c.Close()
		return
	}
	l := &cogLink{name: name, hosts: hosts, sess: sess}
	h.routes.add(l)
	log.Printf("gopeer hub: cog %s up from %s hosts=%s", name, raw.RemoteAddr(), strings.Join(hosts, ","))
	<-sess.CloseChan()
	h.routes.remove(l)
	log.Printf("gopeer hub: cog %s down", name)
}

func readHello(in *bufio.Reader) (name string, hosts []string, err error) {
	line, err := in.ReadSlice('\n')
	if err != nil {
		return "", nil, fmt.Errorf("hello: %w", err)
	}
	fields := strings.Fields(strings.TrimPrefix(string(line), helloPrefix))
	if !strings.HasPrefix(string(line), helloPrefix) || len(fields) != 2 {
		return "", nil, errors.New("hello: want \"gopeer/1 NAME HOST[,HOST...]\"")
	}
	for _, hst := range strings.Split(fields[1], ",") {
		bare := strings.TrimPrefix(hst, "*.")
		if _, err := hostName([]byte(bare)); err != nil {
			return "", nil, fmt.Errorf("hello: host %q: %w", hst, err)
		}
		hosts = append(hosts, strings.ToLower(strings.TrimSuffix(hst, ".")))
	}
	return fields[0], hosts, nil
}

// visitor: read the first TLS record, route by its SNI, open a stream to a cog that
// serves the name, send [len(host)][host][record bytes] as one write, then relay.
func (h *hub) visitor(tc *net.TCPConn) {
	// One buffer holds the route header in front of the record, so the stream's first
	// frame is a single write; it goes back to the pool before the relay starts
	// (Stream.Write returns once yamux has written the frame).
	fb := helloPool.Get().(*[]byte)
	defer func() {
		if fb != nil {
			helloPool.Put(fb)
		}
	}()
	first := *fb
	rec := first[1+maxHostBytes:]
	tc.SetReadDeadline(time.Now().Add(helloTimeout))
	n, err := readRecord(tc, rec)
	if err == nil {
		var host string
		if host, err = serverName(rec[:n]); err == nil {
			tc.SetReadDeadline(time.Time{})
			start := maxHostBytes - len(host)
			first[start] = byte(len(host))
			copy(first[start+1:], host)
			if st := h.open(host); st != nil {
				if _, err := st.Write(first[start : 1+maxHostBytes+n]); err != nil {
					st.Close()
					tc.Close()
					return
				}
				helloPool.Put(fb)
				fb = nil
				relay(tc, st)
				return
			}
			err = fmt.Errorf("no cog serves %q", host)
		}
	}
	debugf("visitor %s: %v", tc.RemoteAddr(), err)
	tc.Close()
}

func (h *hub) open(host string) *yamux.Stream {
	for i := 0; i < openAttempts; i++ {
		l := h.routes.pick(host)
		if l == nil {
			return nil
		}
		st, err := l.sess.OpenStream()
		if err == nil {
			return st
		}
		if l.sess.IsClosed() {
			h.routes.remove(l)
		}
	}
	return nil
}
