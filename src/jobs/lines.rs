//! A downloading file read line by line, as the Batch API's output files
//! are: only the line at hand and what arrived after it are in memory.

use crate::embedder::EmbedError;
use futures::StreamExt;

pub(super) type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

pub struct Lines {
    stream: ByteStream,
    buffer: Vec<u8>,
    url: String,
    done: bool,
}

impl Lines {
    pub(super) fn new(stream: ByteStream, url: String) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
            url,
            done: false,
        }
    }

    #[cfg(test)]
    pub(super) fn of_chunks(chunks: Vec<&'static [u8]>) -> Self {
        let items: Vec<_> = chunks
            .into_iter()
            .map(|c| Ok(bytes::Bytes::from_static(c)))
            .collect();
        Self::new(Box::pin(futures::stream::iter(items)), "test".into())
    }

    /// The next non-blank line, `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, EmbedError> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let rest = self.buffer.split_off(at + 1);
                let mut line = std::mem::replace(&mut self.buffer, rest);
                line.truncate(at);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.done {
                if self.buffer.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buffer)));
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(EmbedError::Transport {
                        url: self.url.clone(),
                        url_var: "OPENAI_BASE_URL",
                        reason: e.to_string(),
                    })
                }
                None => self.done = true,
            }
        }
    }
}
