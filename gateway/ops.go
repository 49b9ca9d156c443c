package gateway

import (
	"log/slog"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// opsPaths are the routes of the operations listener.
var opsPaths = []string{"/metrics", "/healthz", "/readyz", "/debug/pprof/"}

// OpsHandler serves the operations listener: /metrics (Prometheus; native
// histograms when scraped with protobuf), /healthz (the process is alive),
// /readyz (200 once the API accepts requests, 503 before, during shutdown
// and after the ledger stopped) and /debug/pprof/. It has no
// authentication: bind it to an address only operators reach.
func (s *Server) OpsHandler() http.Handler {
	return OpsHandler(s.met.reg, s.Ready, s.log)
}

// OpsHandler serves the operations listener for a registry and a
// readiness check; the server binary starts it before the ledger has
// recovered, so /readyz answers 503 (and /healthz 200) while it does.
func OpsHandler(reg *prometheus.Registry, ready func() bool, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorLog:          slogPrinter{log},
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

type slogPrinter struct {
	log interface{ Error(string, ...any) }
}

func (p slogPrinter) Println(v ...any) { p.log.Error("metrics exposition failed", "err", v) }
