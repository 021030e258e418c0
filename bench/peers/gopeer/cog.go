package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	// reconnectDelay: pause between tunnel attempts after the tunnel drops.
	reconnectDelay = time.Second
	// targetDialTimeout bounds the cog's connect to a route's target.
	targetDialTimeout = 5 * time.Second
)

// routeFlag collects repeated -route host=ip:port.
type routeFlag map[string]string

func (r routeFlag) String() string { return fmt.Sprint(map[string]string(r)) }

func (r routeFlag) Set(v string) error {
	host, target, ok := strings.Cut(v, "=")
	if !ok || host == "" || target == "" {
		return errors.New("want host=ip:port")
	}
	r[strings.ToLower(strings.TrimSuffix(host, "."))] = target
	return nil
}

type cog struct {
	hubAddr string
	name    string
	routes  routeFlag
	tlsCfg  *tls.Config
}

func runCog(args []string) {
	fs := flag.NewFlagSet("cog", flag.ExitOnError)
	c := &cog{routes: routeFlag{}}
	fs.StringVar(&c.hubAddr, "hub", "127.0.0.1:12444", "the hub's tunnel address")
	fs.StringVar(&c.name, "name", "cog", "this cog's name, as the hub logs it")
	fs.Var(c.routes, "route", "host=ip:port to serve; repeatable; host may be *.domain")
	hubCert := fs.String("hub-cert", "", "the hub's certificate (PEM): accept only that one (default: any)")
	sharedFlags(fs)
	fs.Parse(args)
	opts.check()
	if len(c.routes) == 0 {
		log.Fatal("cog: at least one -route host=ip:port is required")
	}
	serverName, _, _ := net.SplitHostPort(c.hubAddr)
	c.tlsCfg = &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	if *hubCert != "" {
		pinned, err := readCertDER(*hubCert)
		if err != nil {
			log.Fatalf("cog: -hub-cert: %v", err)
		}
		// The bench's hub certificate is self-signed: pin it rather than build a CA.
		c.tlsCfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], pinned) {
				return errors.New("hub certificate is not the one given by -hub-cert")
			}
			return nil
		}
	}
	for {
		err := c.session()
		log.Printf("gopeer cog %s: tunnel down: %v; again in %v", c.name, err, reconnectDelay)
		time.Sleep(reconnectDelay)
	}
}

func readCertDER(file string) ([]byte, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(text)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return block.Bytes, nil
}

// session dials the hub, says hello, and serves streams until the tunnel ends.
func (c *cog) session() error {
	raw, err := net.DialTimeout("tcp", c.hubAddr, setupTimeout)
	if err != nil {
		return err
	}
	raw.(*net.TCPConn).SetNoDelay(true)
	tc := tls.Client(raw, c.tlsCfg)
	tc.SetDeadline(time.Now().Add(setupTimeout))
	hosts := make([]string, 0, len(c.routes))
	for h := range c.routes {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	if _, err := fmt.Fprintf(tc, "%s%s %s\n", helloPrefix, c.name, strings.Join(hosts, ",")); err != nil {
		tc.Close()
		return err
	}
	in := bufio.NewReaderSize(tc, maxHelloLineBytes)
	answer, err := in.ReadString('\n')
	if err != nil {
		tc.Close()
		return err
	}
	if answer != "ok\n" {
		tc.Close()
		return fmt.Errorf("hub: %s", strings.TrimSpace(answer))
	}
	tc.SetDeadline(time.Time{})
	sess, err := yamux.Server(newTunnelConn(tc, in, opts.coalesce), opts.muxConfig())
	if err != nil {
		tc.Close()
		return err
	}
	defer sess.Close()
	log.Printf("gopeer cog %s: tunnel up to %s hosts=%s", c.name, c.hubAddr, strings.Join(hosts, ","))
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return err
		}
		go c.stream(st)
	}
}

func (c *cog) target(host string) (string, bool) {
	if t, ok := c.routes[host]; ok {
		return t, true
	}
	if dot := strings.IndexByte(host, '.'); dot > 0 {
		t, ok := c.routes["*"+host[dot:]]
		return t, ok
	}
	return "", false
}

// stream reads the route header [len][host], connects to that route's target and
// relays; the visitor's ClientHello follows the header on the stream and is relayed
// like every later byte.
func (c *cog) stream(st *yamux.Stream) {
	var hdr [1 + maxHostBytes]byte
	st.SetReadDeadline(time.Now().Add(setupTimeout))
	if _, err := io.ReadFull(st, hdr[:1]); err != nil {
		st.Close()
		return
	}
	host := hdr[1 : 1+int(hdr[0])]
	if _, err := io.ReadFull(st, host); err != nil {
		st.Close()
		return
	}
	st.SetReadDeadline(time.Time{})
	addr, ok := c.target(string(host))
	if !ok {
		debugf("cog: no route for %q", host)
		st.Close()
		return
	}
	conn, err := net.DialTimeout("tcp", addr, targetDialTimeout)
	if err != nil {
		debugf("cog: %s: %v", addr, err)
		st.Close()
		return
	}
	tc := conn.(*net.TCPConn)
	tc.SetNoDelay(true)
	relay(tc, st)
}
