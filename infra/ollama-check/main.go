// refinery-ollama-check: reads an Ollama Modelfile with Ollama's own parser and renders its TEMPLATE
// with Ollama's own template package, so the gguf job can compare Ollama's prompt with the Hugging
// Face chat template's (jobs/refinery_jobs/ollama.py). Built by infra/bootstrap.sh.
//
//	refinery-ollama-check MODELFILE < {"conversations": [[{"role": "user", "content": "hi"}], ...]}
//
// Prints one JSON object: the parsed commands, FROM, TEMPLATE (null when there is none), the
// parameters as Ollama types them (api.FormatParams, which refuses unknown names and bad values)
// and, per conversation, the prompt Ollama's chat endpoint would send to the model. Errors: one JSON
// object {"error": "..."} and exit 1.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/parser"
	"github.com/ollama/ollama/template"
)

type input struct {
	Conversations [][]api.Message `json:"conversations"`
}

type command struct {
	Name string `json:"name"`
	Args string `json:"args"`
}

type output struct {
	Commands   []command      `json:"commands"`
	From       string         `json:"from"`
	Template   *string        `json:"template"`
	System     *string        `json:"system"`
	Parameters map[string]any `json:"parameters"`
	Renders    []string       `json:"renders"`
}

func fail(format string, args ...any) {
	json.NewEncoder(os.Stdout).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: refinery-ollama-check MODELFILE < conversations.json")
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	modelfile, err := parser.ParseFile(f)
	if err != nil {
		fail("%s: %v", os.Args[1], err)
	}

	var in input
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("stdin: %v", err)
	}
	if len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, &in); err != nil {
			fail("stdin: %v", err)
		}
	}

	out := output{Commands: []command{}, Parameters: map[string]any{}, Renders: []string{}}
	params := map[string][]string{}
	for _, c := range modelfile.Commands {
		out.Commands = append(out.Commands, command{c.Name, c.Args})
		switch c.Name {
		case "model":
			out.From = c.Args
		case "template":
			s := c.Args
			out.Template = &s
		case "system":
			s := c.Args
			out.System = &s
		case "adapter", "license", "message", "renderer", "parser", "requires":
		default: // PARAMETER <name> <value>: the parser names the command after the parameter
			params[c.Name] = append(params[c.Name], c.Args)
		}
	}
	// Ollama's own typing of PARAMETER values (what `ollama create` does with them).
	for name, values := range params {
		typed, err := api.FormatParams(map[string][]string{name: values})
		if err != nil {
			fail("PARAMETER %s: %v", name, err)
		}
		for k, v := range typed { // stop is a list of strings, whatever its count
			out.Parameters[k] = v
		}
	}

	if len(in.Conversations) > 0 {
		if out.Template == nil {
			fail("%s has no TEMPLATE to render", os.Args[1])
		}
		tmpl, err := template.Parse(*out.Template)
		if err != nil {
			fail("TEMPLATE: %v", err)
		}
		for i, messages := range in.Conversations {
			// What Ollama's chat endpoint does with a request's messages (server/prompt.go chatPrompt): the
			// Modelfile's SYSTEM first when the request has none, then Template.Execute.
			if out.System != nil && (len(messages) == 0 || messages[0].Role != "system") {
				messages = append([]api.Message{{Role: "system", Content: *out.System}}, messages...)
			}
			var b bytes.Buffer
			if err := tmpl.Execute(&b, template.Values{Messages: messages}); err != nil {
				fail("conversation %d: %v", i, err)
			}
			out.Renders = append(out.Renders, b.String())
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fail("%v", err)
	}
}
