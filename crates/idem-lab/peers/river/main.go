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
	t := time.Now()
	if err := client.Start(ctx); err != nil {
		return err
	}
	for {
		var open int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE state <> 'completed'").Scan(&open); err != nil {
			return err
		}
		if open == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(t).Seconds()
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = client.Stop(stopCtx)
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"peer":       "river",
		"version":    version(),
		"jobs":       jobs,
		"in_flight":  inFlight,
		"seconds":    elapsed,
		"per_second": float64(jobs) / elapsed,
		"semantics":  "at-least-once",
		"config":     fmt.Sprintf("MaxWorkers %d, FetchCooldown %s, FetchPollInterval %s", inFlight, cooldown, poll),
	})
}
