// River (github.com/riverqueue/river), the Go job queue on PostgreSQL, running the peer
// workload of `idem-lab bench peers`: N no-op jobs inserted up front, then processed with
// the given number of workers; prints one JSON object with the time the processing took.
// At-least-once: River retries a job whose worker died, it keeps no partner key.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

type NoopArgs struct {
	N int `json:"n"`
}

func (NoopArgs) Kind() string { return "noop" }

type NoopWorker struct {
	river.WorkerDefaults[NoopArgs]
}

func (w *NoopWorker) Work(ctx context.Context, job *river.Job[NoopArgs]) error { return nil }

func version() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, d := range info.Deps {
			if d.Path == "github.com/riverqueue/river" {
				return d.Version
			}
		}
	}
	return "unknown"
}

func main() {
	url := flag.String("database-url", os.Getenv("DATABASE_URL"), "PostgreSQL URL")
	jobs := flag.Int("jobs", 20000, "no-op jobs to process")
	workers := flag.Int("workers", 32, "jobs in flight")
	// River's default (100 ms) caps a queue at workers/0.1 s jobs a second; idem's worker
	// polls every 20 ms and claims again as soon as a batch settles, so River gets its
	// fastest setting here.
	cooldown := flag.Duration("fetch-cooldown", time.Millisecond, "River FetchCooldown")
	poll := flag.Duration("fetch-poll-interval", 20*time.Millisecond, "River FetchPollInterval")
	flag.Parse()
	if err := run(*url, *jobs, *workers, *cooldown, *poll); err != nil {
		fmt.Fprintln(os.Stderr, "river peer:", err)
		os.Exit(1)
	}
}

func run(url string, jobs, inFlight int, cooldown, poll time.Duration) error {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	migrator, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return err
	}
	ws := river.NewWorkers()
	river.AddWorker(ws, &NoopWorker{})
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: inFlight}},
		Workers:           ws,
		FetchCooldown:     cooldown,
		FetchPollInterval: poll,
	})
	if err != nil {
		return err
	}
	for start := 0; start < jobs; start += 1000 {
		params := []river.InsertManyParams{}
		for n := start; n < jobs && n < start+1000; n++ {
			params = append(params, river.InsertManyParams{Args: NoopArgs{N: n}})
		}
		if _, err := client.InsertManyFast(ctx, params); err != nil {
			return err
		}
	}
	if _, err := pool.Exec(ctx, "VACUUM ANALYZE river_job"); err != nil {
		return err
	}
	// Count completions from River's own events (as idem's run counts its settle
	// notifications) rather than scanning the table while the jobs run; the scan confirms.
	completed, unsubscribe := client.SubscribeConfig(&river.SubscribeConfig{
		Kinds:    []river.EventKind{river.EventKindJobCompleted},
		ChanSize: jobs + 1000,
	})
	defer unsubscribe()
	cpu0 := machineBusyTicks()
	t := time.Now()
	if err := client.Start(ctx); err != nil {
		return err
	}
	done := 0
	for {
		if done >= jobs {
			var open int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE state <> 'completed'").Scan(&open); err != nil {
				return err
			}
			if open == 0 {
				break
			}
		}
		select {
		case <-completed:
			done++
		case <-time.After(time.Second):
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE state = 'completed'").Scan(&done); err != nil {
				return err
			}
		}
	}
	elapsed := time.Since(t).Seconds()
	cpu := float64(machineBusyTicks()-cpu0) / 100
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = client.Stop(stopCtx)
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"peer":        "river",
		"version":     version(),
		"jobs":        jobs,
		"in_flight":   inFlight,
		"seconds":     elapsed,
		"per_second":  float64(jobs) / elapsed,
		"cpu_seconds": cpu,
		"semantics":   "at-least-once",
		"config":      fmt.Sprintf("MaxWorkers %d, FetchCooldown %s, FetchPollInterval %s", inFlight, cooldown, poll),
	})
}

// machineBusyTicks is the machine's busy CPU time so far in USER_HZ ticks (100 a second),
// from /proc/stat: user + nice + system + irq + softirq of all cores. 0 where it is missing.
func machineBusyTicks() int64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line := strings.SplitN(string(data), "\n", 2)[0]
	f := strings.Fields(line)
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		if i < len(f) {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			busy += v
		}
	}
	return busy
}
