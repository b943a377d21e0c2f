//! The extension's model, embeddings and chat interfaces.

use wasmtime::component::Resource;
use wasmtime_wasi_nn::Graph;

use super::LlmView;
use super::bindings::wasi_nn_llm::llm::{chat, embeddings, model, types};
use crate::engine;

impl model::Host for LlmView<'_> {
    fn tokenize(
        &mut self,
        graph: Resource<Graph>,
        text: String,
        add_special: bool,
        parse_special: bool,
    ) -> wasmtime::Result<Result<Vec<u32>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(engine.tokenize(&text, add_special, parse_special).map_err(Into::into))
    }

    fn detokenize(
        &mut self,
        graph: Resource<Graph>,
        tokens: Vec<u32>,
        render_special: bool,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(engine.detokenize(&tokens, render_special).map_err(Into::into))
    }

    fn count_tokens(&mut self, graph: Resource<Graph>, text: String) -> wasmtime::Result<Result<u32, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(engine.count_tokens(&text).map_err(Into::into))
    }

    fn model_info(&mut self, graph: Resource<Graph>) -> wasmtime::Result<Result<types::ModelMetadata, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let i = engine.info();
        Ok(Ok(types::ModelMetadata {
            name: i.name,
            architecture: i.architecture,
            trained_context: i.trained_context,
            max_session_context: i.max_session_context,
            vocab_size: i.vocab_size,
            bos: i.bos,
            eos: i.eos,
            eot: i.eot,
            parameters: i.parameters,
            size_bytes: i.size_bytes,
            chat_template: i.chat_template,
            quantization: i.quantization,
        }))
    }

    fn apply_chat_template(
        &mut self,
        graph: Resource<Graph>,
        messages: Vec<types::Message>,
        add_assistant_turn: bool,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let messages: Vec<_> = messages.into_iter().map(|m| (m.role, m.content)).collect();
        Ok(engine.apply_chat_template(&messages, add_assistant_turn).map_err(Into::into))
    }

    fn list_models(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.ctx.access.permitted().map(str::to_owned).collect())
    }

    fn features(&mut self, graph: Resource<Graph>) -> wasmtime::Result<Result<Vec<types::Feature>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(Ok(engine.features().into_iter().map(types::Feature::from).collect()))
    }

    fn model_decoding(&mut self, graph: Resource<Graph>) -> wasmtime::Result<Result<model::Decoding, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let speculation = engine.speculation();
        Ok(Ok(model::Decoding {
            speculation: speculation.mode.name().into(),
            draft_max: if speculation.on() { speculation.draft_max } else { 0 },
        }))
    }

    fn model_identity(&mut self, graph: Resource<Graph>) -> wasmtime::Result<Result<model::Identity, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let digest = try_llm!(engine.identity());
        let (backend, backend_version) = engine.model().version();
        Ok(Ok(model::Identity {
            digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
            size_bytes: engine.file_size(),
            format: "gguf".into(),
            backend: backend.into(),
            backend_version: backend_version.into(),
            host: concat!("wasi-nn-llm ", env!("CARGO_PKG_VERSION")).into(),
            device: engine.device().into(),
        }))
    }
}

impl embeddings::Host for LlmView<'_> {
    fn embed(
        &mut self,
        graph: Resource<Graph>,
        inputs: Vec<embeddings::EmbedInput>,
        options: embeddings::EmbedOptions,
    ) -> wasmtime::Result<Result<Vec<embeddings::Embedding>, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        tracing::trace!(model = engine.name(), inputs = inputs.len(), ?options, "embeddings.embed");
        let inputs: Vec<_> = inputs
            .into_iter()
            .map(|input| match input {
                embeddings::EmbedInput::Text(text) => engine::EmbedInput::Text(text),
                embeddings::EmbedInput::Tokens(tokens) => engine::EmbedInput::Tokens(tokens),
            })
            .collect();
        let pooling = options.pooling.map(|p| match p {
            embeddings::Pooling::Mean => engine::Pooling::Mean,
            embeddings::Pooling::Cls => engine::Pooling::Cls,
            embeddings::Pooling::Last => engine::Pooling::Last,
        });
        let vectors = try_llm!(engine.embed(&inputs, pooling, options.normalize, self.ctx.access.quota()));
        Ok(Ok(vectors.into_iter().map(|e| embeddings::Embedding { vector: e.vector, tokens: e.tokens }).collect()))
    }

    fn dimensions(&mut self, graph: Resource<Graph>) -> wasmtime::Result<Result<u32, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        Ok(Ok(engine.dimensions()))
    }
}

impl chat::Host for LlmView<'_> {
    fn render(
        &mut self,
        graph: Resource<Graph>,
        messages: Vec<chat::ChatMessage>,
        options: chat::RenderOptions,
    ) -> wasmtime::Result<Result<chat::Rendered, types::Error>> {
        let engine = try_llm!(self.engine(&graph)?);
        let messages: Vec<crate::chat::ChatMessage> = messages.into_iter().map(Into::into).collect();
        let options = crate::chat::RenderOptions::from(options);
        Ok(engine.render_chat(&messages, &options).map(Into::into).map_err(Into::into))
    }

    fn json_schema_grammar(&mut self, schema: String) -> wasmtime::Result<Result<String, types::Error>> {
        Ok(engine::schema_grammar(&schema).map_err(Into::into))
    }
}

impl From<chat::ChatMessage> for crate::chat::ChatMessage {
    fn from(m: chat::ChatMessage) -> Self {
        Self {
            role: m.role,
            content: m.content,
            reasoning: m.reasoning,
            tool_calls: m
                .tool_calls
                .into_iter()
                .map(|c| crate::chat::ToolCall { id: c.id, name: c.name, arguments: c.arguments })
                .collect(),
            tool_call_id: m.tool_call_id,
            name: m.name,
        }
    }
}

impl From<chat::RenderOptions> for crate::chat::RenderOptions {
    fn from(o: chat::RenderOptions) -> Self {
        use crate::chat::TemplateValue as V;
        Self {
            add_generation_prompt: o.add_generation_prompt,
            tools: o
                .tools
                .into_iter()
                .map(|t| crate::chat::Tool { name: t.name, description: t.description, parameters: t.parameters })
                .collect(),
            documents: o.documents,
            arguments: o
                .arguments
                .into_iter()
                .map(|(name, value)| {
                    let value = match value {
                        chat::TemplateValue::Boolean(b) => V::Boolean(b),
                        chat::TemplateValue::Integer(i) => V::Integer(i),
                        chat::TemplateValue::Float(x) => V::Float(x),
                        chat::TemplateValue::Text(s) => V::Text(s),
                        chat::TemplateValue::Json(s) => V::Json(s),
                    };
                    (name, value)
                })
                .collect(),
        }
    }
}

impl From<crate::chat::Rendered> for chat::Rendered {
    fn from(r: crate::chat::Rendered) -> Self {
        let source = match r.source {
            crate::chat::TemplateSource::Jinja => chat::TemplateSource::Jinja,
            crate::chat::TemplateSource::BuiltIn(name) => chat::TemplateSource::BuiltIn(name),
        };
        Self { text: r.text, source }
    }
}
