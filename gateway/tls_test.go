package gateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 and its
// key as PEM files and returns their paths and the certificate.
func writeSelfSigned(t *testing.T, dir, cn string) (string, string, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert
}

// TestServeTLS protects the TLS listener: with a certificate and key the
// API answers over TLS 1.2+ to a client that trusts the certificate, and
// refuses plain HTTP and TLS 1.1; a missing or mismatched key names the
// flag to fix; a renewed certificate is served without a restart.
func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, cert := writeSelfSigned(t, dir, "azyq test")

	g := newFzGateway(t)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	cfg, err := loadTLS(certFile, keyFile, func() time.Time { return time.Unix(0, clock.Load()) })
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.srv.ServeTLS(ln, cfg) }()
	t.Cleanup(func() { g.srv.http.Shutdown(); <-done })
	url := "https://" + ln.Addr().String() + "/v1/catalogue"

	client := func(pool *x509.CertPool, maxVersion uint16) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: maxVersion}}}
	}
	get := func(c *http.Client, url string) (int, error) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+fzAdmin)
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	if status, err := get(client(pool, 0), url); err != nil || status != 200 {
		t.Fatalf("GET over TLS: %d %v", status, err)
	}
	if _, err := get(client(pool, tls.VersionTLS11), url); err == nil {
		t.Fatal("a TLS 1.1 client was served")
	}
	if _, err := get(client(x509.NewCertPool(), 0), url); err == nil {
		t.Fatal("a client that does not trust the certificate was served")
	}
	if status, err := get(&http.Client{Timeout: 10 * time.Second}, "http://"+ln.Addr().String()+"/v1/catalogue"); err == nil && status == 200 {
		t.Fatal("plain HTTP was served on the TLS listener")
	}

	// A renewed certificate is picked up once the reload interval passed,
	// on new connections, without a restart.
	_, _, renewed := writeSelfSigned(t, dir, "azyq renewed")
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(certFile, later, later); err != nil {
		t.Fatal(err)
	}
	pool2 := x509.NewCertPool()
	pool2.AddCert(renewed)
	if _, err := get(client(pool2, 0), url); err == nil {
		t.Fatal("the renewed certificate was served before the reload interval passed")
	}
	clock.Add(int64(tlsReloadInterval))
	if status, err := get(client(pool2, 0), url); err != nil || status != 200 {
		t.Fatalf("GET after the certificate was renewed: %d %v", status, err)
	}

	if _, err := LoadTLS(filepath.Join(dir, "missing.pem"), keyFile); err == nil {
		t.Fatal("a missing certificate was accepted")
	}
	_, otherKey, _ := writeSelfSigned(t, t.TempDir(), "other")
	if _, err := LoadTLS(certFile, otherKey); err == nil {
		t.Fatal("a key that does not match the certificate was accepted")
	}
}
