package cryptolenssim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// ControlHandler serves inspection and fault control over HTTP for the sandbox:
//
//	GET  /keys?product=N    the product's keys (state, as the dashboard shows it)
//	GET  /calls             the call log (tokens never appear in it)
//	POST /faults            Faults as JSON (latency as a Go duration string)
//	GET  /publickey         the RSA public key signed answers verify with (.NET XML, as
//	                        Cryptolens shows it on the account's Security page)
func (s *Sim) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.URL.Query().Get("product"))
		if err != nil {
			reply(w, http.StatusBadRequest, map[string]string{"error": "product must be a number"})
			return
		}
		reply(w, http.StatusOK, s.Keys(id))
	})
	mux.HandleFunc("GET /publickey", func(w http.ResponseWriter, _ *http.Request) {
		xml, err := s.PublicKeyXML()
		if err != nil {
			reply(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		w.Header().Set("Content-Type", "application/xml")
		_, _ = w.Write([]byte(xml))
	})
	mux.HandleFunc("GET /calls", func(w http.ResponseWriter, _ *http.Request) { reply(w, http.StatusOK, s.Calls()) })
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		var p struct {
			Down           bool    `json:"down"`
			ErrorRate      float64 `json:"error_rate"`
			RateLimitRate  float64 `json:"rate_limit_rate"`
			GarbageRate    float64 `json:"garbage_rate"`
			LostAnswerRate float64 `json:"lost_answer_rate"`
			TimeoutRate    float64 `json:"timeout_rate"`
			NoSubscription bool    `json:"no_subscription"`
			Latency        string  `json:"latency"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			reply(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		f := Faults{Down: p.Down, ErrorRate: p.ErrorRate, RateLimitRate: p.RateLimitRate, GarbageRate: p.GarbageRate,
			LostAnswerRate: p.LostAnswerRate, TimeoutRate: p.TimeoutRate, NoSubscription: p.NoSubscription}
		if p.Latency != "" {
			d, err := time.ParseDuration(p.Latency)
			if err != nil {
				reply(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
				return
			}
			f.Latency = d
		}
		s.SetFaults(f)
		reply(w, http.StatusOK, map[string]bool{"ok": true})
	})
	return mux
}
