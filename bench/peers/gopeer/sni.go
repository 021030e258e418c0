package main

import (
	"errors"
	"io"
	"net"
)

// A TLS record: 5-byte header, at most 2^14 bytes of plaintext fragment (RFC 8446 5.1).
const (
	recordHeaderBytes = 5
	maxFragmentBytes  = 1 << 14
	maxRecordBytes    = recordHeaderBytes + maxFragmentBytes
	maxHostBytes      = 253
)

var (
	errNotHandshake = errors.New("first bytes are not a TLS handshake record")
	errTruncated    = errors.New("ClientHello truncated or malformed")
	errNoServerName = errors.New("ClientHello has no server_name")
	errBadHostName  = errors.New("server_name is not a DNS name")
)

// readRecord fills buf with the first TLS record from c and returns how many bytes
// were read (possibly more than the record, if the visitor sent more already). buf
// must hold maxRecordBytes.
func readRecord(c net.Conn, buf []byte) (int, error) {
	n, err := io.ReadAtLeast(c, buf, recordHeaderBytes)
	if err != nil {
		return n, err
	}
	if buf[0] != 22 || buf[1] != 3 { // content type handshake, legacy version 3.x
		return n, errNotHandshake
	}
	fragment := int(buf[3])<<8 | int(buf[4])
	if fragment == 0 || fragment > maxFragmentBytes {
		return n, errTruncated
	}
	if want := recordHeaderBytes + fragment; n < want {
		m, err := io.ReadAtLeast(c, buf[n:], want-n)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// cursor walks a byte slice; the first short read poisons it, so a parser can read
// a whole structure and check ok once.
type cursor struct {
	b  []byte
	ok bool
}

func (c *cursor) take(n int) []byte {
	if !c.ok || n > len(c.b) {
		c.ok = false
		return nil
	}
	out := c.b[:n]
	c.b = c.b[n:]
	return out
}

func (c *cursor) uint(width int) int {
	v := 0
	for _, x := range c.take(width) {
		v = v<<8 | int(x)
	}
	return v
}

// vector reads a length-prefixed field (TLS's opaque<..> with a width-byte length).
func (c *cursor) vector(width int) cursor {
	return cursor{b: c.take(c.uint(width)), ok: c.ok}
}

// serverName returns the lower-cased host_name of the ClientHello in the TLS record
// at the start of rec. Only that record is looked at: a ClientHello whose
// server_name lands in a later record is refused, as capsul's hub would have to
// reassemble it and gopeer does not.
func serverName(rec []byte) (string, error) {
	r := cursor{b: rec, ok: true}
	r.take(3) // type and version, checked by readRecord
	hs := r.vector(2)
	if hs.uint(1) != 1 { // msg_type client_hello
		return "", errNotHandshake
	}
	// The handshake may be longer than this record; walk what we have.
	hs.take(3)
	hs.take(2 + 32) // legacy_version, random
	hs.vector(1)    // legacy_session_id
	hs.vector(2)    // cipher_suites
	hs.vector(1)    // legacy_compression_methods
	if !hs.ok {
		return "", errTruncated
	}
	// The extensions may run past this record: walk the part that is here.
	extBytes := hs.uint(2)
	if !hs.ok {
		return "", errNoServerName
	}
	if extBytes < len(hs.b) {
		hs.b = hs.b[:extBytes]
	}
	exts := cursor{b: hs.b, ok: true}
	for exts.ok && len(exts.b) >= 4 {
		typ := exts.uint(2)
		body := exts.vector(2)
		if !body.ok {
			return "", errTruncated
		}
		if typ != 0 { // server_name
			continue
		}
		list := body.vector(2)
		for list.ok && len(list.b) > 0 {
			kind := list.uint(1)
			name := list.vector(2)
			if !name.ok {
				return "", errTruncated
			}
			if kind == 0 { // host_name
				return hostName(name.b)
			}
		}
		return "", errNoServerName
	}
	return "", errNoServerName
}

// hostName lower-cases a DNS name and refuses anything else, which also keeps it safe
// to send as the tunnel's per-stream header.
func hostName(b []byte) (string, error) {
	if len(b) > 0 && b[len(b)-1] == '.' {
		b = b[:len(b)-1]
	}
	if len(b) == 0 || len(b) > maxHostBytes {
		return "", errBadHostName
	}
	out := make([]byte, len(b))
	for i, x := range b {
		switch {
		case 'A' <= x && x <= 'Z':
			x += 'a' - 'A'
		case 'a' <= x && x <= 'z', '0' <= x && x <= '9', x == '-', x == '.', x == '_':
		default:
			return "", errBadHostName
		}
		out[i] = x
	}
	return string(out), nil
}
