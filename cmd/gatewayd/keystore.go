package main

import (
	"slices"
	"sync"

	"azyq/gateway"
)

// secretsKeyStore keeps QR signing keys rotated through the admin API in
// the secrets file, which Secrets.Save replaces atomically and syncs: a
// rotation is durable before the new key signs anything.
type secretsKeyStore struct {
	mu      sync.Mutex
	secrets *gateway.Secrets
	dir     string
}

func (k *secretsKeyStore) SaveQRKeys(keys []gateway.QRKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	next := *k.secrets
	next.QRKeys = slices.Clone(keys)
	if err := next.Save(k.dir); err != nil {
		return err
	}
	k.secrets.QRKeys = next.QRKeys
	return nil
}
