package gateway

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Online backups: POST /v1/admin/checkpoints (admin) writes a Pebble
// checkpoint of the ledger, taken while the gateway serves, under
// DATA/checkpoints/<UTC time>/ledger, where DATA is the directory holding
// the ledger's DATA/ledger. The checkpoint is written under a ".tmp-" name
// and renamed once complete, so a directory without that prefix is always
// a whole checkpoint; leftovers of a crash are removed by the next call.
//
// Checkpoints share the ledger's sstables through hard links, so they cost
// little at first and grow as compactions replace files. They are meant to
// be copied off the machine; the gateway keeps the newest checkpointsKeep
// and deletes older ones after each new checkpoint. The secrets file is not
// copied: it holds tokens and keys and is backed up separately (see
// docs/operations.md).

const (
	checkpointsDir  = "checkpoints"
	checkpointsKeep = 3
	// checkpointLayout names a checkpoint by its UTC time; it sorts by time.
	checkpointLayout = "20060102T150405.000Z"
	checkpointTmp    = ".tmp-"
)

// checkpointMu lets one checkpoint run at a time in the process: a second
// request meanwhile is answered 409 conflict rather than queued, and the
// clean-up of unfinished checkpoints never removes a running one's files.
var checkpointMu sync.Mutex

// checkpointRoot is DATA/checkpoints for a ledger in DATA/ledger.
func (s *Server) checkpointRoot() string {
	return filepath.Join(filepath.Dir(filepath.Clean(s.led.Dir())), checkpointsDir)
}

// serveCheckpoint answers POST /v1/admin/checkpoints: 201 with the
// checkpoint's name, path, time, size and the checkpoints kept.
func (c *call) serveCheckpoint() {
	s := c.s
	if err := emptyOrEmptyObject(&c.parser, c.ctx.PostBody()); err != nil {
		c.fail(codeInvalidRequest, err.Error())
		return
	}

	if !checkpointMu.TryLock() {
		c.fail(codeConflict, "a checkpoint is being taken; retry once it has finished")
		return
	}
	defer checkpointMu.Unlock()

	root := s.checkpointRoot()
	at := s.led.Now().UTC()
	name := at.Format(checkpointLayout)
	final := filepath.Join(root, name)
	tmp := filepath.Join(root, checkpointTmp+name)
	if err := prepareCheckpointRoot(root); err != nil {
		c.failErr(err)
		return
	}
	if _, err := os.Stat(final); err == nil {
		c.failf(codeConflict, "checkpoint %s already exists; retry in a moment", name)
		return
	}

	if err := os.MkdirAll(tmp, 0o700); err != nil {
		c.failErr(fmt.Errorf("cannot create checkpoint directory %q: %w", tmp, err))
		return
	}
	if err := s.led.Checkpoint(filepath.Join(tmp, "ledger")); err != nil {
		os.RemoveAll(tmp)
		c.failErr(err)
		return
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		c.failErr(fmt.Errorf("cannot rename checkpoint %q: %w", tmp, err))
		return
	}
	if err := syncDir(root); err != nil {
		c.failErr(err)
		return
	}
	size, err := dirSize(final)
	if err != nil {
		c.failErr(err)
		return
	}
	kept, err := pruneCheckpoints(root, checkpointsKeep)
	if err != nil {
		c.failErr(err)
		return
	}

	b := append(c.buf[:0], '{')
	b = appendStr(b, "checkpoint", name)
	b = appendStr(b, "path", final)
	b = appendTime(b, "created_at", at, s.prog.Location)
	b = appendInt(b, "bytes", size)
	b = appendKey(b, "kept")
	b = append(b, '[')
	for i, k := range kept {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
	}
	b = append(b, ']', '}')
	c.buf = b
	c.reply(201, b)
}

// prepareCheckpointRoot creates DATA/checkpoints and removes the remains of
// checkpoints a crash interrupted.
func prepareCheckpointRoot(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("cannot create checkpoint directory %q: %w", root, err)
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("cannot list checkpoints in %q: %w", root, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), checkpointTmp) {
			if err := os.RemoveAll(filepath.Join(root, e.Name())); err != nil {
				return fmt.Errorf("cannot remove unfinished checkpoint %q: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// listCheckpoints returns the names of the complete checkpoints, oldest
// first. A missing directory has none.
func listCheckpoints(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot list checkpoints in %q: %w", root, err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if _, err := time.Parse(checkpointLayout, e.Name()); err == nil {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// pruneCheckpoints deletes all but the newest keep checkpoints and returns
// the names kept.
func pruneCheckpoints(root string, keep int) ([]string, error) {
	names, err := listCheckpoints(root)
	if err != nil {
		return nil, err
	}
	for len(names) > keep {
		if err := os.RemoveAll(filepath.Join(root, names[0])); err != nil {
			return nil, fmt.Errorf("cannot delete old checkpoint %q: %w", names[0], err)
		}
		names = names[1:]
	}
	return names, nil
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Size()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cannot measure checkpoint %q: %w", dir, err)
	}
	return n, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cannot open %q to sync it: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cannot sync %q: %w", dir, err)
	}
	return nil
}

// checkpointCollector exports the checkpoints on disk at scrape time: how
// many, beside how many are kept, and the newest one's time, so an alert
// can tell when backups stopped.
type checkpointCollector struct{ s *Server }

var (
	cdCount = prometheus.NewDesc("azyq_checkpoints",
		"Complete ledger checkpoints under DATA/checkpoints.", nil, nil)
	cdKeep = prometheus.NewDesc("azyq_checkpoints_kept_max",
		"Checkpoints the gateway keeps before deleting the oldest.", nil, nil)
	cdLast = prometheus.NewDesc("azyq_checkpoint_last_timestamp_seconds",
		"Time of the newest complete checkpoint (absent when there is none).", nil, nil)
)

func (c checkpointCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cdCount
	ch <- cdKeep
	ch <- cdLast
}

func (c checkpointCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(cdKeep, prometheus.GaugeValue, checkpointsKeep)
	names, err := listCheckpoints(c.s.checkpointRoot())
	if err != nil {
		ch <- prometheus.NewInvalidMetric(cdCount, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(cdCount, prometheus.GaugeValue, float64(len(names)))
	if len(names) > 0 {
		t, _ := time.Parse(checkpointLayout, names[len(names)-1])
		ch <- prometheus.MustNewConstMetric(cdLast, prometheus.GaugeValue, float64(t.UnixNano())/1e9)
	}
}
