// Command goload is bench/'s Go load client: the same closed loops as the Python
// client processes of bench/loadgen.py, on etcd's own Go client (clientv3), so a cell
// can be measured with a client whose CPU per request is close to etcd's own
// benchmark tool's (issue 12's table was measured with such a client).
//
// It serves one JSON command per stdin line and answers one JSON line on stdout:
//
//	{"cmd": "preload", "keys": [0, 2, ...], "inflight": 128}
//	    -> {"ok": true, "done": N}
//	{"cmd": "cell", "op": "put", "inflight": 32, "total_inflight": 64, "first_loop": 0,
//	 "start_in": 1.3, "duration": 5, "seed": 1}
//	    -> {"ok": true, "lat": "<base64 of little-endian float64 seconds>", ...}
//	{"cmd": "stop"}
//
// Built by bench/goload.py with Debian's etcd 3.4 client sources (GOPATH mode).
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"

	"go.etcd.io/etcd/clientv3"
	"go.uber.org/zap"
	"google.golang.org/grpc/status"
)

const (
	numKeys      = 10000
	valueSize    = 256
	keyFmt       = "bench/key/%05d"
	keyPrefix    = "bench/key/"
	keyRangeEnd  = "bench/key0"
	callTimeout  = 10 * time.Second
	maxOpsInLoop = 5000000 // a hard bound on every loop besides its time window
)

type command struct {
	Cmd           string  `json:"cmd"`
	Keys          []int   `json:"keys"`
	Inflight      int     `json:"inflight"`
	TotalInflight int     `json:"total_inflight"`
	FirstLoop     int     `json:"first_loop"`
	StartIn       float64 `json:"start_in"`
	Duration      float64 `json:"duration"`
	Seed          int64   `json:"seed"`
	Op            string  `json:"op"`
}

type phaseCounts struct {
	Warm   int `json:"warm"`
	Window int `json:"window"`
	After  int `json:"after"`
}

type cellResult struct {
	OK                  bool           `json:"ok"`
	Lat                 string         `json:"lat"`
	Errors              map[string]int `json:"errors"`
	WarmErrors          map[string]int `json:"warm_errors"`
	Ops                 phaseCounts    `json:"ops"`
	CompareFailed       int            `json:"compare_failed"`
	WarmupCompareFailed int            `json:"warmup_compare_failed"`
}

// codeName gives a gRPC status the name Python's grpc uses (DEADLINE_EXCEEDED).
func codeName(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "DEADLINE_EXCEEDED"
	}
	camel := status.Code(err).String()
	var b strings.Builder
	for i, r := range camel {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

func key(i int) string { return fmt.Sprintf(keyFmt, i) }

// loopState is what one closed loop keeps between its requests.
type loopState struct {
	kv      clientv3.KV
	rnd     *rand.Rand
	value   string
	owned   []int         // txn: the loop's own keys
	revs    map[int]int64 // txn: each owned key's mod_revision, as kube-apiserver keeps it
	created int           // create: keys made so far
	prefix  string        // create: bench/create/<cell>/<loop>/
}

// call sends the loop's next request; it returns whether a compare held (true for
// ops without one).
func (s *loopState) call(ctx context.Context, op string) (bool, error) {
	switch op {
	case "put":
		_, err := s.kv.Put(ctx, key(s.rnd.Intn(numKeys)), s.value)
		return true, err
	case "range":
		_, err := s.kv.Get(ctx, key(s.rnd.Intn(numKeys)))
		return true, err
	case "srange":
		_, err := s.kv.Get(ctx, key(s.rnd.Intn(numKeys)), clientv3.WithSerializable())
		return true, err
	case "txn":
		// store.GuaranteedUpdate: If(mod_revision == last seen) Then(Put) Else(Get).
		i := s.owned[s.rnd.Intn(len(s.owned))]
		k := key(i)
		resp, err := s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k), "=", s.revs[i])).
			Then(clientv3.OpPut(k, s.value)).
			Else(clientv3.OpGet(k)).Commit()
		if err != nil {
			return true, err
		}
		if resp.Succeeded {
			s.revs[i] = resp.Header.Revision
		} else if len(resp.Responses) > 0 && len(resp.Responses[0].GetResponseRange().Kvs) > 0 {
			s.revs[i] = resp.Responses[0].GetResponseRange().Kvs[0].ModRevision
		} else {
			s.revs[i] = 0
		}
		return resp.Succeeded, nil
	case "create":
		// store.Create: If(mod_revision == 0) Then(Put), no Else.
		s.created++
		k := fmt.Sprintf("%s%d", s.prefix, s.created)
		resp, err := s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, s.value)).Commit()
		if err != nil {
			return true, err
		}
		return resp.Succeeded, nil
	}
	return true, fmt.Errorf("unknown op %q", op)
}

type worker struct {
	clients []*clientv3.Client // [ep0, ep1, ..., ep0, ...]: loop g uses clients[g % n]
	index   int
}

func randomValue(rnd *rand.Rand) string {
	b := make([]byte, valueSize)
	rnd.Read(b)
	return string(b)
}

// revisions reads every bench key's mod_revision (keys only, linearizable), the
// update loops' first compares.
func (w *worker) revisions() (map[int]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*callTimeout)
	defer cancel()
	resp, err := w.clients[0].Get(ctx, keyPrefix, clientv3.WithRange(keyRangeEnd),
		clientv3.WithKeysOnly())
	if err != nil {
		return nil, err
	}
	out := make(map[int]int64, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var i int
		if _, err := fmt.Sscanf(string(kv.Key[len(keyPrefix):]), "%d", &i); err == nil {
			out[i] = kv.ModRevision
		}
	}
	return out, nil
}

func (w *worker) preload(keys []int, inflight int) (int, error) {
	if inflight < 1 {
		inflight = 1
	}
	rnd := rand.New(rand.NewSource(int64(w.index)))
	value := randomValue(rnd)
	todo := make(chan int, len(keys))
	for _, k := range keys {
		todo <- k
	}
	close(todo)
	var mu sync.Mutex
	done := 0
	var firstErr error
	var wg sync.WaitGroup
	for i := 0; i < inflight; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := w.clients[i%len(w.clients)]
			for k := range todo {
				var err error
				for attempt := 0; attempt < 5; attempt++ {
					ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
					_, err = c.Put(ctx, key(k), value)
					cancel()
					if err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				mu.Lock()
				if err == nil {
					done++
				} else if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	return done, firstErr
}

func (w *worker) cell(c command) (*cellResult, error) {
	var revs map[int]int64
	if c.Op == "txn" {
		var err error
		if revs, err = w.revisions(); err != nil {
			return nil, err
		}
	}
	tStart := time.Now().Add(time.Duration(c.StartIn * float64(time.Second)))
	tEnd := tStart.Add(time.Duration(c.Duration * float64(time.Second)))
	res := &cellResult{OK: true, Errors: map[string]int{}, WarmErrors: map[string]int{}}
	var mu sync.Mutex
	var lat []float64
	var wg sync.WaitGroup
	for i := 0; i < c.Inflight; i++ {
		g := c.FirstLoop + i
		rnd := rand.New(rand.NewSource(c.Seed*1000003 + int64(g)))
		s := &loopState{kv: w.clients[g%len(w.clients)], rnd: rnd, value: randomValue(rnd),
			prefix: fmt.Sprintf("bench/create/%d/%d/", c.Seed, g)}
		if c.Op == "txn" {
			s.revs = map[int]int64{}
			for k := g; k < numKeys; k += c.TotalInflight {
				s.owned = append(s.owned, k)
				s.revs[k] = revs[k]
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []float64
			var ops phaseCounts
			cmpFailed, warmCmpFailed := 0, 0
			errs, warmErrs := map[string]int{}, map[string]int{}
			for n := 0; n < maxOpsInLoop; n++ {
				t0 := time.Now()
				if !t0.Before(tEnd) {
					break
				}
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				held, err := s.call(ctx, c.Op)
				cancel()
				t1 := time.Now()
				inWindow := !t1.Before(tStart) && !t1.After(tEnd)
				if err != nil {
					if inWindow {
						errs[codeName(err)]++
					} else {
						warmErrs[codeName(err)]++
					}
					time.Sleep(10 * time.Millisecond) // no hot spin against a failing server
					continue
				}
				switch {
				case t1.Before(tStart):
					ops.Warm++
					if !held {
						warmCmpFailed++
					}
				case inWindow:
					mine = append(mine, t1.Sub(t0).Seconds())
					if !held {
						cmpFailed++
					}
				default:
					ops.After++
				}
			}
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, mine...)
			res.Ops.Warm += ops.Warm
			res.Ops.After += ops.After
			res.CompareFailed += cmpFailed
			res.WarmupCompareFailed += warmCmpFailed
			for k, v := range errs {
				res.Errors[k] += v
			}
			for k, v := range warmErrs {
				res.WarmErrors[k] += v
			}
		}()
	}
	wg.Wait()
	res.Ops.Window = len(lat)
	buf := make([]byte, 8*len(lat))
	for i, v := range lat {
		binary.LittleEndian.PutUint64(buf[8*i:], math.Float64bits(v))
	}
	res.Lat = base64.StdEncoding.EncodeToString(buf)
	return res, nil
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated host:port list")
	conns := flag.Int("conns", 1, "connections (clientv3 clients) per endpoint")
	index := flag.Int("index", 0, "this client process's number")
	flag.Parse()
	quiet := zap.NewProductionConfig()
	quiet.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	eps := strings.Split(*endpoints, ",")
	w := &worker{index: *index}
	for i := 0; i < *conns; i++ {
		for _, ep := range eps {
			c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep},
				DialTimeout: 10 * time.Second, LogConfig: &quiet})
			if err != nil {
				fmt.Fprintln(os.Stderr, "goload: connect:", err)
				os.Exit(2)
			}
			defer c.Close()
			w.clients = append(w.clients, c)
		}
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20) // a preload command lists up to 10k keys
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			_ = out.Encode(map[string]interface{}{"ok": false, "error": err.Error()})
			continue
		}
		var reply interface{}
		var err error
		switch c.Cmd {
		case "stop":
			return
		case "preload":
			var n int
			n, err = w.preload(c.Keys, c.Inflight)
			reply = map[string]interface{}{"ok": true, "done": n}
		case "cell":
			reply, err = w.cell(c)
		default:
			err = fmt.Errorf("unknown command %q", c.Cmd)
		}
		if err != nil {
			reply = map[string]interface{}{"ok": false, "error": err.Error()}
		}
		if err := out.Encode(reply); err != nil {
			os.Exit(1)
		}
	}
}
