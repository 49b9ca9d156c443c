package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"

	"azyq/settlement"
)

func init() {
	register(&command{
		name:    "settlement pull",
		summary: "download every ready settlement batch (JSON, CSV, XML) and acknowledge it",
		usage:   "settlement pull --dir DIR [--token SETTLEMENT_TOKEN]",
		run:     runSettlementPull,
	})
}

// pullCrashEnv names a test hook: when set to k, settlement pull exits
// with status 75 right after its k-th step (a file written or a batch
// acknowledged), as if it had been killed there.
const pullCrashEnv = "GATEWAYCTL_PULL_CRASH_AFTER"

// pullPageLimit is how many batches one listing request asks for.
const pullPageLimit = 100

// The files of a batch, in the order they are written.
var pullFiles = []struct{ suffix, path string }{
	{".json", ""},
	{".lines.csv", "/lines.csv"},
	{".payments.xml", "/payments.xml"},
}

// puller downloads batches into a directory. A batch is complete on disk
// when its three files exist and check out against each other (see
// verify); only then is it acknowledged, under a reference derived from
// the batch id and the hash of the three files, so a rerun after a crash
// at any point neither loses a batch (it is not acknowledged until its
// files are durable) nor duplicates one (files are replaced atomically
// under fixed names, and the same files give the same reference, which
// the gateway accepts again).
type puller struct {
	e     *env
	c     *client
	dir   string
	steps int
	crash int
}

func runSettlementPull(e *env, args []string) int {
	fs := e.flags("settlement pull")
	dir := fs.String("dir", "", "directory the batch files are written to (required)")
	token := fs.String("token", "", "settlement bearer token (default: env GATEWAY_SETTLEMENT_TOKEN, then the global --token)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || fs.NArg() != 0 {
		e.errorf("settlement pull: --dir is required and no arguments are taken")
		return exitUsage
	}
	c := e.client()
	switch {
	case *token != "":
		c.token = *token
	case os.Getenv("GATEWAY_SETTLEMENT_TOKEN") != "":
		c.token = os.Getenv("GATEWAY_SETTLEMENT_TOKEN")
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		e.errorf("cannot create directory %q (--dir): %v", *dir, err)
		return exitUsage
	}
	p := &puller{e: e, c: c, dir: *dir}
	p.crash, _ = strconv.Atoi(os.Getenv(pullCrashEnv))

	ctx := context.Background()
	ids, err := p.ready(ctx)
	if err != nil {
		e.errorf("cannot list ready batches: %v", err)
		return exitUsage
	}
	status, pulled := exitOK, 0
	for _, id := range ids {
		ref, err := p.pull(ctx, id)
		if err != nil {
			e.errorf("batch %s: %v", id, err)
			status = exitProblem
			continue
		}
		pulled++
		fmt.Fprintf(e.stdout, "%s acknowledged %s\n", id, ref)
	}
	fmt.Fprintf(e.stdout, "pulled %d of %d ready batches into %s\n", pulled, len(ids), *dir)
	return status
}

// ready lists the ids of every ready batch, oldest first.
func (p *puller) ready(ctx context.Context) ([]string, error) {
	var ids []string
	after := ""
	for pages := 0; ; pages++ {
		q := url.Values{"status": {"ready"}, "limit": {strconv.Itoa(pullPageLimit)}}
		if after != "" {
			q.Set("after", after)
		}
		body, err := p.c.do(ctx, "GET", "/v1/settlement/batches?"+q.Encode(), nil)
		if err != nil {
			return nil, err
		}
		var page struct {
			Batches []settlement.Batch `json:"batches"`
			Next    string             `json:"next"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, fmt.Errorf("cannot decode the batch list: %w", err)
		}
		for _, b := range page.Batches {
			ids = append(ids, b.ID)
		}
		if page.Next == "" || page.Next == after {
			return ids, nil
		}
		after = page.Next
	}
}

// step counts a finished step and plays dead after the configured one.
func (p *puller) step() {
	p.steps++
	if p.crash > 0 && p.steps == p.crash {
		os.Exit(75)
	}
}

// pull makes one batch's files complete on disk, then acknowledges it.
func (p *puller) pull(ctx context.Context, id string) (string, error) {
	if _, err := settlement.ParseBatchID(id); err != nil {
		return "", fmt.Errorf("the gateway listed a malformed batch id: %w", err)
	}
	if err := p.verify(id); err != nil {
		for _, f := range pullFiles {
			name := filepath.Join(p.dir, id+f.suffix)
			if f.suffix != ".json" && (p.verifyOne(id, f.suffix) == nil || p.noPayments(id, f.suffix)) {
				continue
			}
			if err := p.download(ctx, "/v1/settlement/batches/"+id+f.path, name); err != nil {
				return "", err
			}
			p.step()
		}
		if err := p.verify(id); err != nil {
			return "", fmt.Errorf("downloaded files do not agree: %w", err)
		}
	}

	ref, err := p.reference(id)
	if err != nil {
		return "", err
	}
	body, _ := json.Marshal(map[string]string{"reference": ref})
	if _, err := p.c.do(ctx, "POST", "/v1/settlement/batches/"+id+"/acknowledgement", body); err != nil {
		return "", fmt.Errorf("cannot acknowledge: %w", err)
	}
	p.step()
	return ref, nil
}

// download streams a GET into name atomically: a temporary file in the
// same directory, fsync, rename over name, fsync of the directory.
func (p *puller) download(ctx context.Context, path, name string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", p.c.base+path, nil)
	if err != nil {
		return fmt.Errorf("cannot build request for %q (--addr): %w", path, err)
	}
	req.Header.Set("Authorization", "Bearer "+p.c.token)
	// No overall timeout: lines.csv of a large batch streams for as long
	// as it takes; the connection's own read errors still end it.
	resp, err := (&http.Client{Transport: p.c.http.Transport}).Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the gateway at %q (--addr): %w", p.c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("cannot download %s: %d %s", path, resp.StatusCode, truncate(data, 200))
	}
	return writeAtomic(name, func(w io.Writer) error {
		_, err := io.Copy(w, resp.Body)
		return err
	})
}

// writeAtomic writes a file so that name holds either its old content or
// the whole new one, durably, whatever happens.
func writeAtomic(name string, fill func(io.Writer) error) error {
	dir := filepath.Dir(name)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return fmt.Errorf("cannot create a temporary file in %q (--dir): %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	bw := bufio.NewWriterSize(tmp, 256<<10)
	err = fill(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot write %q: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("cannot rename into %q: %w", name, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cannot open directory %q to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("cannot sync directory %q: %w", dir, err)
	}
	return nil
}

// readBatch reads the batch JSON on disk.
func (p *puller) readBatch(id string) (*settlement.Batch, error) {
	data, err := os.ReadFile(filepath.Join(p.dir, id+".json"))
	if err != nil {
		return nil, err
	}
	var b settlement.Batch
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("%s.json: %w", id, err)
	}
	if b.ID != id {
		return nil, fmt.Errorf("%s.json holds batch %q", id, b.ID)
	}
	return &b, nil
}

// verify checks that all three files of a batch are on disk and agree.
func (p *puller) verify(id string) error {
	for _, f := range pullFiles {
		if err := p.verifyOne(id, f.suffix); err != nil {
			return err
		}
	}
	return nil
}

// verifyOne checks one file against the batch JSON: lines.csv has the
// header and one row per redemption and refund; payments.xml parses and
// pays the batch's net in as many transfers as shops are paid.
func (p *puller) verifyOne(id, suffix string) error {
	b, err := p.readBatch(id)
	if err != nil || suffix == ".json" {
		return err
	}
	if b.Net == 0 && suffix == ".payments.xml" {
		return nil // a batch that pays nobody has no payment file
	}
	data, err := os.ReadFile(filepath.Join(p.dir, id+suffix))
	if err != nil {
		return err
	}
	switch suffix {
	case ".lines.csv":
		rows := bytes.Count(data, []byte("\n"))
		if !bytes.HasPrefix(data, []byte(settlement.LinesHeader)) || rows != int(1+b.RedemptionCount+b.RefundCount) {
			return fmt.Errorf("%s%s has %d lines, want %d", id, suffix, rows, 1+b.RedemptionCount+b.RefundCount)
		}
	case ".payments.xml":
		var doc settlement.Document
		if err := xml.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("%s%s: %w", id, suffix, err)
		}
		paid := 0
		for _, st := range b.Stores {
			if st.Paid > 0 {
				paid++
			}
		}
		gh := doc.Init.GroupHeader
		if gh.MsgID != id || gh.NumberOfTxs != paid || gh.ControlSum != settlement.FormatKZT(b.Net) {
			return fmt.Errorf("%s%s: %d transfers summing to %s, want %d summing to %s",
				id, suffix, gh.NumberOfTxs, gh.ControlSum, paid, settlement.FormatKZT(b.Net))
		}
	}
	return nil
}

// noPayments reports whether suffix is the payment file of a batch that
// pays nobody (every shop's net zero or carried): the gateway has no
// payment file for it.
func (p *puller) noPayments(id, suffix string) bool {
	if suffix != ".payments.xml" {
		return false
	}
	b, err := p.readBatch(id)
	return err == nil && b.Net == 0
}

// reference derives the acknowledgement reference from the batch id and
// the SHA-256 of its three files, so the same files give the same
// reference on every run.
func (p *puller) reference(id string) (string, error) {
	h := sha256.New()
	for _, f := range pullFiles {
		if p.noPayments(id, f.suffix) {
			continue
		}
		fd, err := os.Open(filepath.Join(p.dir, id+f.suffix))
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, fd)
		fd.Close()
		if err != nil {
			return "", err
		}
	}
	return id + "-sha256-" + hex.EncodeToString(h.Sum(nil))[:32], nil
}
