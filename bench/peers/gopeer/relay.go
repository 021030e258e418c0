package main

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	// yamux frame header: version, type, flags(2), stream id(4), length(4).
	frameHeaderBytes = 12
	// tlsRecordPayload is the most plaintext one TLS record carries.
	tlsRecordPayload = 16 << 10
	// halfCloseGrace: once one direction of a proxied connection has ended, the other
	// gets this long before both are torn down. This yamux has no write-only close
	// (a local Stream.Close also ends local reads), so a half-closed connection cannot
	// live on usefully; the bound also frees a writer stuck on a stream window that
	// will never reopen because its visitor went away.
	halfCloseGrace = 10 * time.Second
)

var (
	bufBytes int
	// upChunk caps each TCP read that becomes one yamux data frame, so that with its
	// 12-byte header the frame fills whole TLS records (2 x 16 KiB with the default
	// buffer) instead of spilling a few bytes into a third, tiny one.
	upChunk int
	bufPool sync.Pool
)

func initBuffers(n int) {
	bufBytes = n
	upChunk = n - frameHeaderBytes
	if n >= tlsRecordPayload {
		upChunk = n/tlsRecordPayload*tlsRecordPayload - frameHeaderBytes
	}
	bufPool.New = func() interface{} { b := make([]byte, bufBytes); return &b }
}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// tunnelConn is what a yamux session runs on: the tunnel's TLS connection, read
// through the bufio.Reader that held the handshake line (it may already hold yamux
// bytes), and written so that a data frame costs one TLS write.
//
// Stock yamux writes each data frame as two Writes from its single send goroutine:
// the 12-byte header, then the body. On TLS each Write is a record and a syscall of
// its own. With join set, a data header with a non-zero length is kept back and
// written together with the body that yamux always writes next.
type tunnelConn struct {
	net.Conn
	in      *bufio.Reader
	join    bool
	held    bool
	header  [frameHeaderBytes]byte
	scratch []byte
}

func newTunnelConn(c net.Conn, in *bufio.Reader, join bool) *tunnelConn {
	return &tunnelConn{Conn: c, in: in, join: join, scratch: make([]byte, 0, frameHeaderBytes+bufBytes)}
}

func (t *tunnelConn) Read(p []byte) (int, error) { return t.in.Read(p) }

func (t *tunnelConn) Write(p []byte) (int, error) {
	if t.held {
		t.held = false
		t.scratch = append(append(t.scratch[:0], t.header[:]...), p...)
		n, err := t.Conn.Write(t.scratch)
		if n -= frameHeaderBytes; n < 0 {
			n = 0
		}
		return n, err
	}
	// Version 0, type 0 (data), a body follows.
	if t.join && len(p) == frameHeaderBytes && p[0] == 0 && p[1] == 0 && binary.BigEndian.Uint32(p[8:]) != 0 {
		copy(t.header[:], p)
		t.held = true
		return len(p), nil
	}
	return t.Conn.Write(p)
}

// readerOnly and writerOnly hide ReadFrom/WriteTo, so io.CopyBuffer uses the pooled
// buffer it is given (and its size caps each frame) instead of allocating its own.
type readerOnly struct{ io.Reader }
type writerOnly struct{ io.Writer }

// proxied is one visitor connection and its stream, while relay runs.
type proxied struct {
	tc   *net.TCPConn
	st   *yamux.Stream
	once sync.Once

	mu      sync.Mutex
	running int // directions still copying
	grace   *time.Timer
	done    chan struct{}
}

func (p *proxied) closeBoth() {
	p.once.Do(func() {
		p.tc.Close()
		p.st.Close()
	})
}

// directionEnded starts the grace period when the first direction ends and
// releases relay when the second does.
func (p *proxied) directionEnded() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running--
	if p.running == 1 {
		p.grace = time.AfterFunc(halfCloseGrace, p.closeBoth)
		return
	}
	p.grace.Stop()
	close(p.done)
}

// relay moves bytes between a visitor-side TCP connection and its yamux stream until
// both directions have ended. An EOF is passed on as such: a FIN on the stream
// (Stream.Close) or on TCP (CloseWrite). An error in either direction, or
// halfCloseGrace after the first direction ended, closes both.
func relay(tc *net.TCPConn, st *yamux.Stream) {
	p := &proxied{tc: tc, st: st, running: 2, done: make(chan struct{})}

	go func() {
		b := getBuf()
		defer putBuf(b)
		if _, err := io.CopyBuffer(writerOnly{tc}, st, *b); err != nil {
			p.closeBoth()
		} else {
			tc.CloseWrite()
		}
		p.directionEnded()
	}()

	b := getBuf()
	_, err := io.CopyBuffer(st, readerOnly{tc}, (*b)[:upChunk])
	putBuf(b)
	if err != nil {
		p.closeBoth()
	} else {
		st.Close() // our FIN; with this yamux it also ends the stream's reads once drained
	}
	p.directionEnded()

	<-p.done
	p.closeBoth()
}
