// Package deploy holds what runs azyq in production beside the binary: the
// Prometheus alert rules (prometheus/alerts.yml), the Grafana dashboard
// (grafana/azyq.json) and an example systemd unit (systemd/). Its tests
// check them against a real gateway, promtool and a real Prometheus; see
// docs/operations.md.
package deploy
