# The two commands of the README. Both do their own set-up on a fresh machine.
.PHONY: demo test run

demo:  ## the main job: analyse a demo stream, scores and alerts over an embedded MQTT broker
	@scripts/bootstrap.sh demo
	@PATH="$$HOME/.local/bin:$$PATH" uv run --frozen deepfake-stream demo $(ARGS)

test:  ## lint, then the whole test suite (installs mosquitto and the RTSP server from Debian if missing)
	@scripts/bootstrap.sh test
	@PATH="$$HOME/.local/bin:$$PATH" uv run --frozen ruff check .
	@PATH="$$HOME/.local/bin:$$PATH" uv run --frozen pytest $(ARGS)

run:  ## the service on config.yaml
	@scripts/bootstrap.sh run
	@PATH="$$HOME/.local/bin:$$PATH" uv run --frozen deepfake-stream run --config config.yaml $(ARGS)
