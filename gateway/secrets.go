package gateway

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// SecretsFile is the name of the secrets file in the data directory.
const SecretsFile = "secrets.json"

// Secrets is what the data directory keeps besides the ledger: role tokens
// the gateway generated (tokens given by flag or environment are never
// written here), the QR signing keys, and the demo terminal's key.
type Secrets struct {
	AdminToken      string  `json:"admin_token,omitempty"`
	WalletToken     string  `json:"wallet_token,omitempty"`
	SettlementToken string  `json:"settlement_token,omitempty"`
	QRKeys          []QRKey `json:"qr_keys"`
	Demo            *Demo   `json:"demo,omitempty"`
}

// Demo records what --demo seeded, so a later --demo can print it again.
type Demo struct {
	StoreID     string `json:"store_id"`
	TerminalID  string `json:"terminal_id"`
	TerminalKey string `json:"terminal_key"`
}

// LoadSecrets reads DIR/secrets.json; a missing file gives empty secrets.
func LoadSecrets(dir string) (*Secrets, error) {
	path := filepath.Join(dir, SecretsFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Secrets{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read secrets %q: %w", path, err)
	}
	var s Secrets
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("cannot parse secrets %q: %w", path, err)
	}
	return &s, nil
}

// Save writes DIR/secrets.json atomically with mode 0600: a temporary file
// is written and synced, renamed over the old one, and the directory is
// synced, so a crash leaves either the old file or the new one.
func (s *Secrets) Save(dir string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		panic(fmt.Sprintf("BUG: cannot encode secrets: %v", err))
	}
	path := filepath.Join(dir, SecretsFile)
	tmp, err := os.CreateTemp(dir, SecretsFile+".tmp*")
	if err != nil {
		return fmt.Errorf("cannot write secrets %q: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot write secrets %q: %w", path, err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot write secrets %q: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("cannot sync secrets %q: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("cannot write secrets %q: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("cannot replace secrets %q: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cannot sync directory %q: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cannot sync directory %q: %w", dir, err)
	}
	return nil
}

// NewToken returns a random role token: 160 bits in Crockford base32 with
// a prefix naming the role, such as "azadmin_…".
func NewToken(role string) (string, error) {
	var raw [20]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("cannot generate %s token: %w", role, err)
	}
	b := append(make([]byte, 0, 3+len(role)+32), "az"...)
	b = append(append(b, role...), '_')
	for i := 0; i < len(raw); i += 5 {
		var v uint64
		for _, x := range raw[i : i+5] {
			v = v<<8 | uint64(x)
		}
		b = appendBase32(b, v, 8)
	}
	return string(b), nil
}
