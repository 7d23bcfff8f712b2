//! Hugging Face–compatible chat templates rendered with minijinja.
//!
//! Templates see `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and
//! `raise_exception(msg)`, with `trim_blocks`/`lstrip_blocks` on and Python string methods
//! (`.strip()`, `.startswith()`, …) as in `transformers`.

use minijinja::{Environment, ErrorKind, context};

use super::{ChatMessage, ModelError};

const NAME: &str = "chat";

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    pub(crate) fn new(source: String) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        // transformers renders with these two on; templates are written for them.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(NAME, source)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        Ok(Self { env })
    }

    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, ModelError> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos_token,
            eos_token => eos_token,
        })
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage {
                role: "system".into(),
                content: "  Be brief. ".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
        ]
    }

    #[test]
    fn renders_chatml_with_python_methods() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
        )
        .expect("template");
        let out = t.render(&msgs(), "<s>", "</s>").expect("render");
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                .into(),
        )
        .expect("template");
        let err = t.render(&msgs(), "", "").expect_err("must fail");
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
