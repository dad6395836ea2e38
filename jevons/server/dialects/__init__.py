"""The API dialects besides Chat Completions: OpenAI Responses
(`openai_responses/`, served at /v1/responses) and Anthropic Messages
(`anthropic/`, served at /v1/messages and /anthropic/v1/messages).

Each is a translation in and out of the chat path (server/chat_run.py):
its request becomes a `ChatCompletionRequest`, its result and its stream are
shaped from the same `ChoiceDelta`s and usage the chat route reads. Not to be
confused with server/responses.py, the chat and completions response bodies."""
