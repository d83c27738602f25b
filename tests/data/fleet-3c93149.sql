-- A fleet state database made by the previous release (commit 3c93149, before alembic), as text.
-- Made with: git worktree add /tmp/prev 3c93149; FLEET_HOME=... PYTHONPATH=/tmp/prev python -m fleet
-- submit examples/hello.yaml --wait (twice), a job exiting 7, examples/quickstart.yaml --wait (a
-- result row), users add alice, token create (--name ci; --user alice --name laptop), alice's hello
-- and alice's `sleep 30` cancelled; then: sqlite3 fleet.db .dump
-- Used by tests/test_migrations.py: it must upgrade in place and keep every row.
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE users (
	id INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	is_admin BOOLEAN NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO users VALUES(1,'root',1,1795400814.3467338085);
INSERT INTO users VALUES(2,'alice',0,1795400817.0972328185);
CREATE TABLE jobs (
	id VARCHAR NOT NULL, 
	name VARCHAR NOT NULL, 
	user VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	runner VARCHAR NOT NULL, 
	pool VARCHAR, 
	queue VARCHAR NOT NULL, 
	priority INTEGER NOT NULL, 
	spec_json TEXT NOT NULL, 
	state VARCHAR NOT NULL, 
	reason VARCHAR, 
	message VARCHAR, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	started_at FLOAT, 
	ended_at FLOAT, 
	host VARCHAR, 
	attempt_count INTEGER NOT NULL, 
	current_attempt VARCHAR, 
	why_json TEXT, 
	PRIMARY KEY (id)
);
INSERT INTO jobs VALUES('j1m833mkw800ksc','hello','root','shell','shell',NULL,'*/*/*',500,'{"name":"hello","kind":"shell","runner":"shell","resources":{"pool":null,"arch":null,"accelerator":null,"labels":{},"slots":1},"inputs":{},"params":{},"setup":null,"run":"echo \"hello from $FLEET_HOST ($(uname -m)), job $FLEET_JOB_ID attempt $FLEET_ATTEMPT_ID\"","envs":{},"timeout":60.0,"retries":{"infra":2,"exit_nonzero":0},"priority":500,"outputs":[],"hooks":null,"burst":false}','SUCCEEDED','succeeded',NULL,1795400814.4721124172,1795400814.5209603309,1795400814.5174536704,1795400814.520956993,'localhost',1,'a1m833mkwa00vt7',NULL);
INSERT INTO jobs VALUES('j1m833mmeb00730','hello','root','shell','shell',NULL,'*/*/*',500,'{"name":"hello","kind":"shell","runner":"shell","resources":{"pool":null,"arch":null,"accelerator":null,"labels":{},"slots":1},"inputs":{},"params":{},"setup":null,"run":"echo \"hello from $FLEET_HOST ($(uname -m)), job $FLEET_JOB_ID attempt $FLEET_ATTEMPT_ID\"","envs":{},"timeout":60.0,"retries":{"infra":2,"exit_nonzero":0},"priority":500,"outputs":[],"hooks":null,"burst":false}','SUCCEEDED','succeeded',NULL,1795400815.0516347885,1795400815.0641222,1795400815.0595161915,1795400815.0641195774,'localhost',1,'a1m833mmed002vs',NULL);
INSERT INTO jobs VALUES('j1m833mmz300zbm','boom','root','shell','shell',NULL,'*/*/*',500,'{"name":"boom","kind":"shell","runner":"shell","resources":{"pool":null,"arch":null,"accelerator":null,"labels":{},"slots":1},"inputs":{},"params":{},"setup":null,"run":"echo boom; exit 7","envs":{},"timeout":null,"retries":{"infra":2,"exit_nonzero":0},"priority":500,"outputs":[],"hooks":null,"burst":false}','FAILED','exit_nonzero','exited with 7',1795400815.5872182845,1795400815.5975162983,1795400815.59522295,1795400815.5975131988,'localhost',1,'a1m833mmz400y5c',NULL);
INSERT INTO jobs VALUES('j1m833mng200sd2','quickstart','root','benchmark','onnxruntime',NULL,'*/*/*@onnxruntime',500,'{"name":"quickstart","kind":"benchmark","runner":"onnxruntime","resources":{"pool":null,"arch":null,"accelerator":null,"labels":{},"slots":1},"inputs":{"model":{"kind":"file","filename":"tinycnn.onnx","files":{"tinycnn.onnx":{"sha256":"4ce31d62e234123a7e5d0ee73708c962699691a333fcd30ae0a3b4a297b62f62","size":22218}}}},"params":{"warmup":50,"iterations":1000,"threads":1,"batch":1},"setup":null,"run":null,"envs":{},"timeout":300.0,"retries":{"infra":2,"exit_nonzero":0},"priority":500,"outputs":[],"hooks":null,"burst":false}','SUCCEEDED','succeeded',NULL,1795400816.1307196617,1795400816.563542366,1795400816.1462090015,1795400816.5634934902,'localhost',1,'a1m833mng300j30',NULL);
INSERT INTO jobs VALUES('j1m833mxed00dv6','hello','alice','shell','shell',NULL,'*/*/*',500,'{"name":"hello","kind":"shell","runner":"shell","resources":{"pool":null,"arch":null,"accelerator":null,"labels":{},"slots":1},"inputs":{},"params":{},"setup":null,"run":"echo \"hello from $FLEET_HOST ($(uname -m)), job $FLEET_JOB_ID attempt $FLEET_ATTEMPT_ID\"","envs":{},"timeout":60.0,"retries":{"infra":2,"exit_nonzero":0},"priority":500,"outputs":[],"hooks":null,"burst":false}','SUCCEEDED','succeeded',NULL,1795400824.2691423892,1795400824.2794044017,1795400824.2748727797,1795400824.2794015407,'localhost',1,'a1m833mxee00xtp',NULL);
INSERT INTO jobs VALUES('j1m833mxzh00b1t','nap','alice','shell','shell',NULL,'*/*/*',500,'{"name":"nap","kind":"shell","runner":"shell","resources":{"pool":null,"arch":null,"accelerator":null,"labels":{},"slots":1},"inputs":{},"params":{},"setup":null,"run":"sleep 30","envs":{},"timeout":null,"retries":{"infra":2,"exit_nonzero":0},"priority":500,"outputs":[],"hooks":null,"burst":false}','CANCELLED','cancelled_by_user','cancelled',1795400824.8179957866,1795400827.3672602176,1795400824.8242573738,1795400827.3672573566,'localhost',1,'a1m833mxzk00pwr',NULL);
CREATE TABLE attempts (
	id VARCHAR NOT NULL, 
	job_id VARCHAR NOT NULL, 
	number INTEGER NOT NULL, 
	host VARCHAR NOT NULL, 
	backend VARCHAR NOT NULL, 
	slots INTEGER NOT NULL, 
	state VARCHAR NOT NULL, 
	reason VARCHAR, 
	message VARCHAR, 
	exit_code INTEGER, 
	created_at FLOAT NOT NULL, 
	started_at FLOAT, 
	ended_at FLOAT, 
	log_bytes INTEGER NOT NULL, 
	remote_dir VARCHAR, 
	PRIMARY KEY (id)
);
INSERT INTO attempts VALUES('a1m833mkwa00vt7','j1m833mkw800ksc',1,'localhost','ssh',1,'SUCCEEDED','succeeded',NULL,0,1795400814.4744021892,1795400814.5162963866,1795400814.5198850632,75,NULL);
INSERT INTO attempts VALUES('a1m833mmed002vs','j1m833mmeb00730',1,'localhost','ssh',1,'SUCCEEDED','succeeded',NULL,0,1795400815.0530686378,1795400815.05843544,1795400815.0630784034,75,NULL);
INSERT INTO attempts VALUES('a1m833mmz400y5c','j1m833mmz300zbm',1,'localhost','ssh',1,'FAILED','exit_nonzero','exited with 7',7,1795400815.5885746478,1795400815.5942251682,1795400815.5964396,5,NULL);
INSERT INTO attempts VALUES('a1m833mng300j30','j1m833mng200sd2',1,'localhost','ssh',1,'SUCCEEDED','succeeded',NULL,0,1795400816.1319766044,1795400816.1450238228,1795400816.5620968342,288,NULL);
INSERT INTO attempts VALUES('a1m833mxee00xtp','j1m833mxed00dv6',1,'localhost','ssh',1,'SUCCEEDED','succeeded',NULL,0,1795400824.2703151702,1795400824.2737538814,1795400824.2782390118,75,NULL);
INSERT INTO attempts VALUES('a1m833mxzk00pwr','j1m833mxzh00b1t',1,'localhost','ssh',1,'CANCELLED','cancelled_by_user','cancelled',NULL,1795400824.8193631171,1795400824.8231306076,1795400827.366193056,0,NULL);
CREATE TABLE results (
	id INTEGER NOT NULL, 
	job_id VARCHAR NOT NULL, 
	attempt_id VARCHAR NOT NULL, 
	user VARCHAR NOT NULL, 
	runner VARCHAR NOT NULL, 
	host VARCHAR NOT NULL, 
	device_class VARCHAR NOT NULL, 
	created_at FLOAT NOT NULL, 
	record_json TEXT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO results VALUES(1,'j1m833mng200sd2','a1m833mng300j30','root','onnxruntime','localhost','x86_64/cpu',1795400816.5639634132,'{"model": {"name": "tinycnn.onnx", "sha256": "4ce31d62e234123a7e5d0ee73708c962699691a333fcd30ae0a3b4a297b62f62", "inputs": {"input": {"shape": [1, 3, 64, 64], "dtype": "float32"}}, "outputs": {"probs": {"shape": [1, 10], "dtype": "float32"}}, "opset": 17}, "precision": {"requested": null, "applied": "fp32", "how": "model dtype"}, "batch": 1, "target": {"device_name": "Intel(R) Xeon(R) Processor", "arch": "x86_64", "host": "localhost", "device_class": "x86_64/cpu", "accelerator": "cpu"}, "tool": {"name": "onnxruntime", "version": "1.32.0", "argv": ["/tmp/venv/bin/python", "/tmp/prevhome/local-host/lib/9ba81e0c41aaba0f/onnxruntime/run.py", "job.json"], "scenario": "latency", "warmup": 50, "iterations": 1000, "duration_s": 0.107136742, "threads": 1}, "metrics": {"throughput_per_s": 9333.866060627455, "samples": 1000, "iterations": 1000, "latency_ms": {"min": 0.100947, "mean": 0.10687510799999997, "median": 0.1050905, "p90": 0.1104955, "p95": 0.11446195, "p99": 0.1588216, "max": 0.220639}, "cv": 0.09713701148845719}, "environment": {"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_count": 2, "python": "3.11.7", "onnxruntime": "1.32.0", "numpy": "2.4.6", "os": "Linux-6.18.44-fc-v769-x86_64-with-glibc2.36", "providers_requested": ["CPUExecutionProvider"], "providers_available": ["AzureExecutionProvider", "CPUExecutionProvider"], "providers_applied": ["CPUExecutionProvider"], "providers_missing": []}, "raw": {"per_query": "latencies.json"}, "schema_version": 1, "job_id": "j1m833mng200sd2", "attempt_id": "a1m833mng300j30", "matrix_run_id": null, "invalid_reasons": [], "status": "ok", "comparison_key": "12a3c2555a586eac"}');
CREATE TABLE hosts (
	name VARCHAR NOT NULL, 
	health VARCHAR NOT NULL, 
	health_message VARCHAR, 
	drained BOOLEAN NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE tokens (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	token_hash VARCHAR NOT NULL, 
	created_at FLOAT NOT NULL, 
	last_used_at FLOAT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);
INSERT INTO tokens VALUES(1,1,'bootstrap','992fc201bb73e3fc80743ce35c72ce133f72f18141a78da4b9c9d1ec8d3b7b55',1795400814.3487932681,NULL);
INSERT INTO tokens VALUES(2,2,'default','ca9ac4ff9c0ece074c8975dcd1e5f2e636a644f0c40507aba59a09530eb01b4c',1795400817.0984895229,NULL);
INSERT INTO tokens VALUES(3,1,'ci','69c3418a4426471ea9d61287536be956c96be742548e0ac3952a9cc1c37c58c0',1795400823.1949932575,NULL);
INSERT INTO tokens VALUES(4,2,'laptop','05e5da40d12738442ce5ab4837f7f1f419122008bb3809c4e81ceed278716e6b',1795400823.7296893596,NULL);
CREATE UNIQUE INDEX ix_users_name ON users (name);
CREATE INDEX ix_jobs_pool_id ON jobs (pool, id);
CREATE INDEX ix_jobs_user_id ON jobs (user, id);
CREATE INDEX ix_jobs_state_id ON jobs (state, id);
CREATE INDEX ix_attempts_job_id ON attempts (job_id);
CREATE INDEX ix_attempts_state_host ON attempts (state, host);
CREATE INDEX ix_results_user_id ON results (user, id);
CREATE INDEX ix_results_job_id ON results (job_id);
CREATE INDEX ix_tokens_user_id ON tokens (user_id);
CREATE UNIQUE INDEX ix_tokens_token_hash ON tokens (token_hash);
COMMIT;
