package gateway

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// TLS on the API listener. Bearer tokens and terminal keys cross the wire
// in every request, so anything but loopback must be served over TLS
// (gatewayd --tls-cert and --tls-key), or behind a TLS-terminating proxy
// on the same host.

// tlsReloadInterval bounds how often the certificate files are checked for
// a change: a renewed certificate is picked up without a restart.
const tlsReloadInterval = 10 * time.Second

// LoadTLS reads a PEM certificate (chain) and key and returns the API's TLS
// configuration: TLS 1.2 or newer, the Go library's default cipher suites,
// and the certificate reloaded when its files change.
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	return loadTLS(certFile, keyFile, time.Now)
}

func loadTLS(certFile, keyFile string, now func() time.Time) (*tls.Config, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, now: now}
	if err := r.load(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.get,
	}, nil
}

// ServeTLS serves the API over TLS on ln until Shutdown.
func (s *Server) ServeTLS(ln net.Listener, cfg *tls.Config) error {
	return s.http.Serve(tls.NewListener(ln, cfg))
}

// certReloader hands out the current certificate and re-reads the files
// when their modification time changes, at most every tlsReloadInterval.
// A failed reload keeps the old certificate (and is reported by the next
// handshake's error only if there is none).
type certReloader struct {
	certFile, keyFile string
	now               func() time.Time

	mu struct {
		sync.Mutex
		cert    *tls.Certificate
		modTime time.Time
		checked time.Time
	}
}

func (r *certReloader) load() error {
	st, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("cannot read TLS certificate %q (--tls-cert): %w", r.certFile, err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("cannot load TLS certificate %q and key %q (--tls-cert, --tls-key): %w",
			r.certFile, r.keyFile, err)
	}
	r.mu.Lock()
	r.mu.cert, r.mu.modTime, r.mu.checked = &cert, st.ModTime(), r.now()
	r.mu.Unlock()
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	cert, due := r.mu.cert, r.now().Sub(r.mu.checked) >= tlsReloadInterval
	modTime := r.mu.modTime
	if due {
		r.mu.checked = r.now()
	}
	r.mu.Unlock()
	if due {
		if st, err := os.Stat(r.certFile); err == nil && !st.ModTime().Equal(modTime) {
			if err := r.load(); err == nil {
				r.mu.Lock()
				cert = r.mu.cert
				r.mu.Unlock()
			}
		}
	}
	return cert, nil
}
